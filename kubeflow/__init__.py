"""Kubeflow Pipelines compiler and image."""
