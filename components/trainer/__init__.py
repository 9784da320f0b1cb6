"""Two-tower SSL Trainer: run_fn, model, losses, augmentations."""
