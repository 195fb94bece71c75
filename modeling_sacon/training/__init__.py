"""Pre-training: the `SaconTrainer` (a `transformers.Trainer` extended through public hooks), its callbacks (`callbacks`)
and the model card it writes (`model_card`)."""
