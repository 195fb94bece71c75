"""Helpers shared by the examples and benchmarks: the offline default backbone (`defaults`), and loading a SaCon
checkpoint or composing one from a plain encoder (`loading`)."""
