"""The package's commands: pre-training (`pretrain`), episodic fine-tuning (`finetune`) and FewRel evaluation
(`evaluate`). Each has `main(argv, defaults)`; the scripts in `examples/` call it with their budget as `defaults`."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

__all__ = ["parse_arguments"]


def parse_arguments(
    dataclass_types: Sequence[type], args: Sequence[str] | None = None, defaults: Mapping[str, Any] | None = None
) -> tuple:
    """The argument dataclasses from an argv (default `sys.argv[1:]`) or from one JSON file given alone.

    `defaults` replace the dataclasses' own defaults (a script's budget); options on the command line or in the file
    win over them. An unknown name in `defaults` is an error, as an unknown option is."""
    parser = HfArgumentParser(list(dataclass_types))
    defaults = dict(defaults or {})
    known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f"unknown default options {unknown}")
    argv = sys.argv[1:] if args is None else list(args)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_dict({**defaults, **json.loads(Path(argv[0]).read_text())})
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)
