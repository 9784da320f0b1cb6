"""Stops the run when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets the pipeline go on; the join
step reads its output first and refuses to build training data from
anomalous inputs, naming each feature and the problem.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact, artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class AnomaliesFoundError(ValueError):
    """ExampleValidator reported anomalies; the message lists them."""


def describe(anomalies: anomalies_pb2.Anomalies) -> list[str]:
    """One line per anomaly: ``feature: short description (description)``."""
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
        lines.append(f"feature '{feature}': {reasons or info.description}")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
        lines.append(f"dataset: {reasons or info.description}")
    return lines


def check(anomalies_artifact: artifact.Artifact, table: str) -> None:
    """Raises :class:`AnomaliesFoundError` if any split of the artefact has anomalies."""
    problems = []
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split),
                            ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        problems += [f"  {table}/{split}: {line}" for line in describe(anomalies)]
    if problems:
        raise AnomaliesFoundError(
            f"ExampleValidator found anomalies in the {table} data; the run stops "
            "before training:\n" + "\n".join(problems) + "\nFix the data, or, if the "
            "change is intended, update the schema (spec key `schemas`) and re-run.")
