"""Executor of JoinExamples: validated logs + catalog -> one Examples artefact."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator, Optional

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components import tfrecords
from components.ingest import executor as ingest_executor
from components.join import anomalies, beam_join, strategies
from transforms import features, tables
from transforms.schema import joined_schema
from transforms.spec import SPEC_PARAMETER, spec_from_json

LOGS_KEY = "logs"
CATALOG_KEY = "catalog"
LOGS_ANOMALIES_KEY = "logs_anomalies"
CATALOG_ANOMALIES_KEY = "catalog_anomalies"
EXAMPLES_KEY = "examples"
SCHEMA_KEY = "schema"
SIDE_INPUT_MAX_ITEMS_KEY = "side_input_max_items"
STRATEGY_PROPERTY = "join_strategy"
REPORT_DIR = "report"
SUMMARY_FILE = "summary.json"
SCHEMA_FILE = "schema.pbtxt"
#: File prefix of the joined splits' shards.
DATA_PREFIX = "data_tfrecord"
#: Summary key of the log rows rejected for naming an item not in the catalog.
REJECTED_UNKNOWN = f"rejected_{tables.UNKNOWN}"


def _split_files(artifact: Any, split: str) -> list[str]:
    return tfrecords.split_files(artifact_utils.get_split_uri([artifact], split))


def _tagged_rows(split_path: tuple[str, str], columns: tuple[str, ...]
                 ) -> Iterator[tuple[str, beam_join.Row]]:
    """``(split, row)`` of one ``(split, path)`` log file, ``columns`` only."""
    split, path = split_path
    for row in tfrecords.read_rows(path, columns):
        yield split, row


class _BySplit(beam.DoFn):
    """``(split, bucket, serialized Example)`` -> the Example, on the split's output."""

    def process(self, row: tuple[str, str, bytes]) -> Iterator[Any]:
        yield beam.pvalue.TaggedOutput(row[0], row[2])


def _summary_pairs(joined: beam_join.Joined) -> beam.PCollection:
    rows = joined.examples | "OneRow" >> beam.Map(lambda e: ((e[0], e[1]), 1))
    keys = ((rows, joined.written)
            | "RowsAndWritten" >> beam.Flatten()
            | "KeySplitAndBucket" >> beam.FlatMapTuple(
                lambda key, n: ((key[0], n), (f"{key[0]}_{key[1]}", n))))
    bad = joined.rejects | "KeyReject" >> beam.Map(lambda r: (f"rejected_{r.kind}", r.n_rows))
    zeros = rows.pipeline | "Zeros" >> beam.Create(
        [(s, 0) for s in features.JOINED_SPLITS]
        + [(f"{s}_{b}", 0) for s in features.JOINED_SPLITS for b in features.BUCKETS]
        + [(REJECTED_UNKNOWN, 0)])
    return ((keys, bad, joined.moved, zeros)
            | "AllKeys" >> beam.Flatten()
            | "Sum" >> beam.CombinePerKey(sum))


def choose_strategy(catalog: Any, max_items: int) -> str:
    """``side_input`` if the catalog has at most ``max_items`` rows, else ``shuffle``.

    The row count is the ``rows_ok`` property CatalogExampleGen records on
    its Examples artefact; a catalog without it is joined by shuffle.

    Args:
      catalog: the catalog Examples artefact.
      max_items: the largest catalog joined as an in-memory side input
        (0: always shuffle; validated by ``PipelineConfig``).
    """
    if not catalog.has_custom_property(ingest_executor.ROWS_OK):
        return beam_join.SHUFFLE
    n_items = catalog.get_int_custom_property(ingest_executor.ROWS_OK)
    return beam_join.SIDE_INPUT if n_items <= max_items else beam_join.SHUFFLE


def check_complete(summary: dict[str, int], catalog: Any, logs: list[Any]) -> None:
    """Raises unless every input row was written or counted as rejected.

    Compares the join's counts with the ``rows_ok`` counts the ExampleGens
    recorded (skipped for an input without them): every catalog row once in
    the ``catalog`` split; every log row in ``train`` or ``eval`` or among
    the rejected rows.
    """
    def rows_ok(artifact: Any) -> Optional[int]:
        if not artifact.has_custom_property(ingest_executor.ROWS_OK):
            return None
        return artifact.get_int_custom_property(ingest_executor.ROWS_OK)

    log_counts = [rows_ok(a) for a in logs]
    checks = [("catalog", rows_ok(catalog), summary[features.CATALOG_SPLIT])]
    if logs and None not in log_counts:
        written = (summary[features.TRAIN_SPLIT] + summary[features.EVAL_SPLIT]
                   + sum(v for k, v in summary.items() if k.startswith("rejected_")))
        checks.append(("log", sum(log_counts), written))
    for name, read, written in checks:
        if read is not None and read != written:
            raise RuntimeError(
                f"JoinExamples accounted for {written} of the {read} {name} rows its input "
                f"holds ({summary}); the joined artefact would be incomplete, so it is not "
                "published. Rerun the step; if it repeats, report it with the run's logs.")


def read_summary(examples_uri: str) -> dict[str, int]:
    """Counts stored with a joined Examples artefact (see :class:`Executor`)."""
    with tf.io.gfile.GFile(os.path.join(examples_uri, REPORT_DIR, SUMMARY_FILE)) as f:
        return json.loads(f.read())


class Executor(base_beam_executor.BaseBeamExecutor):
    """Joins logs with the catalog; writes splits train, eval and catalog.

    Refuses to run on inputs ExampleValidator flagged. Joins by shuffle or,
    for a catalog of at most ``side_input_max_items`` rows, with the catalog
    as an in-memory side input (see :func:`choose_strategy`); the strategy
    is recorded as the ``join_strategy`` property. Writes, next to the
    splits, ``report/summary.json`` (items and pairs per split, items and
    rows per head/tail/cold bucket, rejected rows by reason) and
    ``report/rejects*.tsv``; the counts also become custom properties.
    """

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:  # noqa: N802
        """Runs the join (see the class docstring)."""
        spec = spec_from_json(exec_properties[SPEC_PARAMETER])
        for artifact in input_dict[LOGS_ANOMALIES_KEY]:
            anomalies.check(artifact, "logs")
        for artifact in input_dict[CATALOG_ANOMALIES_KEY]:
            anomalies.check(artifact, "catalog")
        catalog = artifact_utils.get_single_instance(input_dict[CATALOG_KEY])
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(features.JOINED_SPLITS))
        report_dir = os.path.join(examples.uri, REPORT_DIR)
        strategy = choose_strategy(catalog, int(exec_properties[SIDE_INPUT_MAX_ITEMS_KEY]))
        log_files = [(split, path)
                     for logs in sorted(input_dict[LOGS_KEY], key=lambda a: a.span)
                     for split in features.LOG_SPLITS
                     for path in _split_files(logs, split)]
        prefix = {split: os.path.join(artifact_utils.get_split_uri([examples], split),
                                      DATA_PREFIX) for split in features.JOINED_SPLITS}
        sink = None
        if strategy == beam_join.SIDE_INPUT:        # its workers write the log splits
            sink = beam_join.ShardSink({s: prefix[s] for s in features.LOG_SPLITS},
                                       os.path.join(examples.uri, ".tmp"))
        logs = beam_join.LogSource(log_files, functools.partial(
            _tagged_rows, columns=spec.log_columns()))
        try:
            with self._make_beam_pipeline() as pipeline:
                joined = pipeline | "Join" >> strategies.JoinLogsWithCatalog(
                    tfrecords.ReadFiles(_split_files(catalog, features.CATALOG_SPLIT),
                                        tfrecords.read_rows), logs, spec, strategy, sink)
                written_by_beam = (features.JOINED_SPLITS if sink is None
                                   else (features.CATALOG_SPLIT,))
                by_split = joined.examples | "BySplit" >> beam.ParDo(_BySplit()).with_outputs(
                    *features.JOINED_SPLITS)
                for split in written_by_beam:
                    _ = by_split[split] | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                        prefix[split], file_name_suffix=".gz")
                _ = (joined.rejects
                     | "RejectLines" >> beam.Map(lambda r: r.line())
                     | "WriteRejects" >> beam.io.WriteToText(
                         os.path.join(report_dir, "rejects"), file_name_suffix=".tsv"))
                _ = (_summary_pairs(joined)
                     | "SummaryList" >> beam.combiners.ToList()
                     | "SummaryJson" >> beam.Map(lambda kv: json.dumps(dict(sorted(kv))))
                     | "WriteSummary" >> beam.io.WriteToText(
                         os.path.join(report_dir, SUMMARY_FILE), shard_name_template=""))
        finally:
            if sink is not None and tf.io.gfile.exists(sink.tmp_dir):
                tf.io.gfile.rmtree(sink.tmp_dir)
        summary = read_summary(examples.uri)
        check_complete(summary, catalog, input_dict[LOGS_KEY])
        if summary[features.TRAIN_SPLIT] == 0:
            raise tables.InputError(
                f"no training pairs left after joining logs with the catalog ({summary}); "
                f"see {report_dir} for the rejected rows and check that the logs' item "
                "ids match the catalog's id column.")
        for key, value in summary.items():
            examples.set_int_custom_property(key, value)
        examples.set_string_custom_property(STRATEGY_PROPERTY, strategy)
        schema = artifact_utils.get_single_instance(output_dict[SCHEMA_KEY])
        io_utils.write_pbtxt_file(os.path.join(schema.uri, SCHEMA_FILE), joined_schema(spec))
