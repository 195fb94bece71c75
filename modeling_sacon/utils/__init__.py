"""Helpers shared by the examples and benchmarks (the offline default backbone)."""
