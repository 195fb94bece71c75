"""Which saved weights file is unreadable, and why (truncated by an interrupted save or download, or corrupt).

Self-contained on purpose: `modeling_sacon.py` imports it relatively, so it travels with the model code to the Hub.
"""

from __future__ import annotations

import glob
import os

from safetensors import SafetensorError, safe_open

__all__ = ["safetensors_problem", "unreadable_safetensors_file"]


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why safetensors cannot read `path` (its header, or data the header promises that the file lacks); None if it
    can. Reads the header only: cheap even for large files."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        return str(err)
    return None


def unreadable_safetensors_file(directory: str | os.PathLike) -> tuple[str, str] | None:
    """(path, problem) of the first `*.safetensors` file in `directory` that cannot be read; None if all can."""
    for path in sorted(glob.glob(os.path.join(str(directory), "*.safetensors"))):
        problem = safetensors_problem(path)
        if problem is not None:
            return path, problem
    return None
