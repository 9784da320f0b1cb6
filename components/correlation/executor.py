"""Executor of FeatureCorrelation: MI statistics over the catalog split."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components import tfrecords
from components.correlation import beam_mi, estimator, report
from transforms import features
from transforms.spec import SPEC_PARAMETER, spec_from_json

EXAMPLES_KEY = "examples"
CORRELATION_KEY = "correlation"
WEIGHTING_KEY = "weighting"
MAX_VALUES_KEY = "max_values"
MEASURE_KEY = "measure"
SAMPLE_ITEMS_KEY = "sample_items"
#: Custom property of the artefact: the share of the catalog its statistics are over.
SAMPLE_FRACTION_PROPERTY = "sample_fraction"


class MissingFeatureError(ValueError):
    """A spec feature is absent from every catalog row."""


def catalog_item(row: dict[str, list[Any]], names: list[str], weighting: str
                 ) -> tuple[dict[str, list[bytes]], float]:
    """A joined catalog row as ``({feature: values}, weight)``."""
    item = {f: row.get(features.item_key(f), []) for f in names}
    if weighting == "items":
        return item, 1.0
    return item, float(row[features.ITEM_TRAIN_COUNT][0])


def sample_fraction(sample_items: int, catalog_items: int) -> float:
    """Share of the catalog to measure: 1 unless a sample of ``sample_items`` is asked for."""
    if sample_items <= 0 or catalog_items <= sample_items:
        return 1.0
    return sample_items / catalog_items


def in_sample(item_id: bytes, fraction: float) -> bool:
    """Whether an item is in the sample: a hash of its id, uniform in [0, 1), below ``fraction``.

    The same items on every run and runner (no seed, no process state).
    """
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(item_id, digest_size=8, person=b"ssl4rec-mi").digest()
    return int.from_bytes(digest, "big") < fraction * 2.0 ** 64


def check_features_present(uri: str, names: list[str]) -> None:
    """Raises MissingFeatureError if a feature key is absent from the first catalog rows."""
    seen: set[str] = set()
    for record in tfrecords.split_dataset(uri, required=False).take(100):
        seen |= set(tfrecords.example_to_dict(record.numpy()))
    missing = [f for f in names if features.item_key(f) not in seen]
    if missing:
        raise MissingFeatureError(
            f"FeatureCorrelation: catalog examples under {uri} have no feature(s) "
            f"{[features.item_key(f) for f in missing]}; the dataset spec and the joined "
            "examples disagree. Re-run the join with the current spec.")


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class Executor(base_beam_executor.BaseBeamExecutor):
    """Computes the MI artefact (see :mod:`components.correlation.report`)."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:  # noqa: N802
        """Runs the Beam job and writes ``correlation.json`` and the heat map."""
        spec = spec_from_json(exec_properties[SPEC_PARAMETER])
        weighting = exec_properties[WEIGHTING_KEY]     # validated by CorrelationSettings
        max_values = int(exec_properties[MAX_VALUES_KEY])
        names = [f.name for f in spec.item_features if f.name != spec.item_id]
        n_masked = estimator.paper_group_size(len(names) + 1)
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        catalog_uri = artifact_utils.get_split_uri([examples], features.CATALOG_SPLIT)
        check_features_present(catalog_uri, [spec.item_id, *names])
        out = artifact_utils.get_single_instance(output_dict[CORRELATION_KEY])
        catalog_items = examples.get_int_custom_property(features.CATALOG_SPLIT)
        fraction = sample_fraction(int(exec_properties.get(SAMPLE_ITEMS_KEY) or 0),
                                   catalog_items)
        id_key = features.item_key(spec.item_id)
        with self._make_beam_pipeline() as pipeline:
            rows = (pipeline
                    | "Read" >> tfrecords.ReadFiles(tfrecords.split_files(catalog_uri),
                                                    tfrecords.read_rows))
            if fraction < 1.0:
                rows = rows | "Sample" >> beam.Filter(
                    lambda row: in_sample(row[id_key][0], fraction))
            stats = (rows
                     | "Item" >> beam.Map(catalog_item, names, weighting)
                     | "Sums" >> beam_mi.CorrelationSums(names, max_values))
            _ = (stats
                 | "ToJson" >> beam.Map(lambda s: json.dumps(
                     [[list(k), v] for k, v in s], default=list))
                 | "WriteSums" >> beam.io.WriteToText(
                     os.path.join(out.uri, "sums.json"), shard_name_template=""))
        with tf.io.gfile.GFile(os.path.join(out.uri, "sums.json")) as f:
            result = [(_tuples(k), _tuples(v)) for k, v in json.loads(f.read())]
        tf.io.gfile.remove(os.path.join(out.uri, "sums.json"))
        doc = report.assemble(result, spec.item_id, names, n_masked, weighting,
                              exec_properties[MEASURE_KEY])
        doc["sample"] = {"catalog_items": catalog_items, "fraction": fraction}
        report.write(doc, out.uri)
        out.set_float_custom_property(SAMPLE_FRACTION_PROPERTY, fraction)
        if fraction < 1.0:
            logging.info("FeatureCorrelation measured a hash sample of %.4f of %d catalog "
                         "items", fraction, catalog_items)
        for line in report.describe_groups(doc):
            logging.info("CFM %s", line)
        out.set_string_custom_property("groups", "\n".join(report.describe_groups(doc)))
