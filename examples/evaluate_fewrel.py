#!/usr/bin/env python
"""Evaluate a SaCon checkpoint (or an off-the-shelf encoder) on FewRel: N-way K-shot, zero-shot, NOTA, PubMed.

    python examples/evaluate_fewrel.py --model_name_or_path outputs/sacon-minilm
    python examples/evaluate_fewrel.py --encoder mean_pooling          # the packaged MiniLM, off the shelf
    python examples/evaluate_fewrel.py --encoder marker                # MiniLM with [h;t] marker pooling, untrained
    python examples/evaluate_fewrel.py --encoder marker --dataset_name thunlp/few_rel \
        --dataset_revision refs/convert/parquet --dataset_split val_wiki   # FewRel from the Hub

Every distinct sentence is encoded once; episodes (seeded, identical for every model) are scored on the cache.
Prints a markdown table; `--output_json` writes {setting: {"accuracy", "ci95", "episodes"}} and `--update_card DIR`
writes the results into the model card of checkpoint DIR.
"""

from modeling_sacon.commands.evaluate import main
from modeling_sacon.data import development_data_dir

DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise

if __name__ == "__main__":
    main(defaults={"data_dir": DATA_DIR})
