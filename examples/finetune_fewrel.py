#!/usr/bin/env python
"""Episodic few-shot fine-tuning of a SaCon checkpoint on FewRel with the stock `transformers.Trainer`.

    python examples/finetune_fewrel.py                                  # MiniLM composed on the spot, ~10 min on 2 CPUs
    python examples/finetune_fewrel.py --model_name_or_path sacon-out --output_dir sacon-fewrel
    python examples/finetune_fewrel.py --fewshot_method prototype --n_way 10 --k_shot 5 --max_steps 1000

Training episodes (N-way K-shot, Q queries per relation, optional NOTA) come from `--train_file` (the 64 FewRel
training relations); evaluation is a fixed, seeded set of `--eval_episodes` episodes of `--eval_setting` (5-1) on
`--validation_file` (the 16 val_wiki relations, disjoint from training), scored by query accuracy once, on the kept
model: no checkpoint is ever selected on that split. By default the final model is kept; with `--selection_relations N
--eval_strategy steps --load_best_model_at_end true` the last N training relations are held out and the checkpoint best
on their episodes is kept. The model and its tokenizer / processor are
written to `--output_dir`, loadable with `SaconForFewShotRelationClassification.from_pretrained` and (its `sacon.*`
weights) `SaconDualEncoderModel.from_pretrained` and the `relation-classification` pipeline.

Any `TrainingArguments` option works (`--learning_rate`, `--per_device_train_batch_size`, `--eval_steps`, ...); the
script `examples/finetune_fewrel.py` sets the run's budget (steps, evaluation cadence, output directory).
"""

from modeling_sacon.commands.finetune import main
from modeling_sacon.data import development_data_dir

DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise

# Sized for about 10 minutes on two CPU cores with all-MiniLM-L6-v2. Command-line options override each of these.
CPU_BUDGET = {
    "output_dir": "sacon-fewrel-finetuned",
    "data_dir": DATA_DIR,
    "max_steps": 120,
    "eval_steps": 60,
    "save_steps": 60,
    "save_total_limit": 1,
    "logging_steps": 10,
}

if __name__ == "__main__":
    main(defaults=CPU_BUDGET)
