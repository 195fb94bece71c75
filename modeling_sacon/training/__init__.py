"""Pre-training: the `SaconTrainer` (a `transformers.Trainer`) and the model card it writes."""
