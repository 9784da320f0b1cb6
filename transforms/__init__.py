"""Dataset contract, feature keys and the Transform preprocessing_fn."""
