"""Serving export and the TF Serving-compatible endpoint."""
