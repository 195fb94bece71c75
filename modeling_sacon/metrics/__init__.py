"""Local `evaluate` metrics shipped with the package, loadable without the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FEWREL_ACCURACY_PATH = Path(__file__).resolve().parent / "fewrel_accuracy"

__all__ = ["FEWREL_ACCURACY_PATH", "load_fewrel_accuracy"]


def load_fewrel_accuracy(**kwargs: Any) -> Any:
    """``evaluate.load`` of the bundled FewRel accuracy metric, by local path (offline).

    ``evaluate`` is imported here, not at module import, because it is slow to import.
    Keyword arguments go to ``evaluate.load`` (e.g. ``keep_in_memory=True``).
    """
    import evaluate

    return evaluate.load(str(FEWREL_ACCURACY_PATH), **kwargs)
