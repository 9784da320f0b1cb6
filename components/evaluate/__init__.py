"""Retrieval evaluation: TFMA metrics, the Evaluator's config, NumPy references."""
