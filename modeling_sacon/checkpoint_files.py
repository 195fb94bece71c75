"""What is wrong with a saved checkpoint's files: which weights file cannot be read and why (cut short by an interrupted
save or download, or corrupt), and which entity markers its tokenizer lacks.

`modeling_sacon.py` and `processing_sacon.py` import it relatively, so it travels (with `hub_files.py`) with the
model code to the Hub.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .hub_files import resolve_file

__all__ = ["check_saved_markers", "describe_unreadable_weights", "safetensors_problem", "unreadable_safetensors_file"]


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


def describe_unreadable_weights(path_or_repo: str | os.PathLike, error: Exception, kwargs: Mapping[str, Any]) -> str:
    """The message for `from_pretrained(path_or_repo, **kwargs)` failing with safetensors' `error`: the file (found in
    the directory, or in a Hub repository's cached snapshot), what is wrong, and what to do."""
    directory = os.path.join(str(path_or_repo), kwargs.get("subfolder") or "")
    if not os.path.isdir(directory):
        cached_only = {**{k: v for k, v in kwargs.items() if k != "force_download"}, "local_files_only": True}
        resolved = next(filter(None, (
            resolve_file(path_or_repo, name, cached_only) for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        )), None)
        directory = os.path.dirname(resolved) if resolved else None
    found = unreadable_safetensors_file(directory) if directory else None
    path, problem = found or (os.path.join(str(path_or_repo), SAFE_WEIGHTS_NAME), str(error))
    return (f"{path}: the model weights cannot be read ({problem}); the file is truncated or corrupt (an interrupted "
            "save or download?): save or download it again")


def _saved_tokens(tokenizer_files: Sequence[str | None]) -> set[str] | None:
    """The added tokens that saved tokenizer files declare (tokenizer.json's `added_tokens`, tokenizer_config.json's
    `added_tokens_decoder`); None when there is no such file."""
    tokens: set[str] | None = None
    for path in filter(None, tokenizer_files):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        entries = saved.get("added_tokens") or list((saved.get("added_tokens_decoder") or {}).values())
        tokens = (tokens or set()) | {entry["content"] for entry in entries if isinstance(entry, Mapping) and "content" in entry}
    return tokens


def check_saved_markers(tokenizer_files: Sequence[str | None], markers: Sequence[str]) -> None:
    """A trained SaCon checkpoint's tokenizer must hold its entity markers and blank token: added again now they could
    get other ids than the embeddings were trained with. Raises a `ValueError` naming the file and the missing ones."""
    tokens = _saved_tokens(tokenizer_files)
    missing = [marker for marker in markers if tokens is not None and marker not in tokens]
    if missing:
        names = ", ".join(path for path in tokenizer_files if path)
        raise ValueError(
            f"{names}: the tokenizer of this SaCon checkpoint lacks the marker tokens {missing} that its model was "
            "trained with (added now, they could take other ids than the trained embeddings); save the processor that "
            "trained the model next to it (`processor.save_pretrained(path)`)"
        )
