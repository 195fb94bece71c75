#!/usr/bin/env python
"""Pre-train SaCon (synergistic anchored contrastive pre-training) with the Hugging Face Trainer.

With no argument it pre-trains two copies of the packaged, offline all-MiniLM-L6-v2 on the embedded corpus
(`pretrain_v2`: 912 Wikidata relations, no FewRel evaluation relation) in shuffled batches of 32 for 500 steps
(about 15 minutes on two CPU cores: `CPU_BUDGET` below), scores FewRel val_wiki 5-way 1-shot prototypes at the end,
and writes model (safetensors + code), processor and model card to outputs/sacon-minilm:

    python examples/pretrain.py
    accelerate launch examples/pretrain.py                                    # same, or on all configured GPUs
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/pretrain.py \\
        --sentence_model_name_or_path bert-base-uncased --max_steps 20000 --learning_rate 3e-5 --bf16
    python examples/pretrain.py --train_files my_corpus.json --label_files my_labels.json
    python examples/pretrain.py --dataset_name org/sacon-pretraining-corpus            # the corpus from the Hub
    python examples/pretrain.py --push_to_hub --hub_model_id org/sacon-base             # every checkpoint -> Hub
    python examples/pretrain.py args.json                                      # all options in one JSON file

Every option of `modeling_sacon.commands.pretrain` (`ModelArguments`, `DataArguments`) and of
`SaconTrainingArguments` works; a run finds and resumes its last complete checkpoint in --output_dir.
"""

from modeling_sacon.commands.pretrain import main
from modeling_sacon.data import development_data_dir

DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise

# The README's main job: sized for a few minutes on two CPU cores. Command-line options override each of these.
# Learning rate 1e-4 (the package default, 5e-5, is for long runs) and entity blanking 0.3 (the authors': 0.7) scored
# best on val_wiki at this length (docs/method.md).
CPU_BUDGET = {
    "output_dir": "outputs/sacon-minilm",
    "data_dir": DATA_DIR,
    "max_steps": 500,
    "learning_rate": 1e-4,
    "blank_probability": 0.3,
    "logging_steps": 10,
    "save_steps": 100,
    "save_total_limit": 2,
}

if __name__ == "__main__":
    main(defaults=CPU_BUDGET)
