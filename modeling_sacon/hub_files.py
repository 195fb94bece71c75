"""Locating a checkpoint's files in a directory or a (cached) Hub repository: the one place that knows which
`from_pretrained` keyword arguments locate files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers.utils import cached_file

# `from_pretrained` keyword arguments that say where files come from (the rest configure the object).
HUB_FILE_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "subfolder")

__all__ = ["HUB_FILE_KWARGS", "resolve_file"]


def resolve_file(path_or_repo: str | os.PathLike, filename: str, kwargs: Mapping[str, Any]) -> str | None:
    """Local path of `filename` in a directory or a Hub repository (downloaded to the cache); None when it is not
    there. `kwargs` are `from_pretrained`'s: only those in `HUB_FILE_KWARGS` are used."""
    options = {key: kwargs[key] for key in HUB_FILE_KWARGS if key in kwargs}
    return cached_file(
        str(path_or_repo), filename, **options,
        _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
    )
