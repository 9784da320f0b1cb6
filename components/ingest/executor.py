"""ExampleGen executor for the dataset contract's CSV files.

Reads every file of a split pattern (one Beam element per file, so files are
read in parallel), checks headers, parses rows per the dataset spec, rejects
malformed rows (or fails, per the spec) and, for the catalog, repeated item
ids. Every reject is written to ``<examples>/report/rejects*.tsv`` and counted
in ``<examples>/report/counts.json``; the counts also become custom
properties of the Examples artefact. A table or span with no valid row fails
the component, so no empty artefact is ever published.

Log files are split and written by the step that reads them (TFX's own hash
partition; one shard per :data:`SHARD_BYTES` of each file and split): a
per-row Beam stage for the split, the serialization and the write cost
more than the parsing.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import os
from typing import Any, Iterable, Iterator, Union

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor, utils, write_split
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components import tfrecords
from transforms import tables
from transforms.spec import SPEC_PARAMETER, spec_from_json

TABLE_KEY = "table"
REPORT_DIR_KEY = "_report_dir"
REPORT_DIR = "report"
COUNTS_FILE = "counts.json"
ROWS_OK = "rows_ok"
REJECTS_TAG = "rejects"
COUNTS_TAG = "counts"
#: Log CSV bytes per output shard of each split (MovieLens-1M's 14 MB: 4 shards).
SHARD_BYTES = 4 << 20


class _ReadFile(beam.DoFn):
    """One CSV file -> its rows (main output), rejects and one ``(rows_ok, n)`` count.

    Rows leave as ``tf.train.Example`` (logs) or ``(id, (file:line, bytes))``
    (catalog, for the id de-duplication); counting them here spares a
    counting step per row.
    """

    def __init__(self, table: tables.Table) -> None:
        self.table = table

    def process(self, path: str) -> Iterator[Any]:
        ok = 0
        catalog = self.table.kind == tables.CATALOG
        for result in tables.read_file(path, self.table):
            if isinstance(result, tables.Reject):
                yield beam.pvalue.TaggedOutput(REJECTS_TAG, result)
                continue
            ok += 1
            yield ((result.key, (result.location, result.example.SerializeToString()))
                   if catalog else result.example)
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, (ROWS_OK, ok))


class _SplitAndWriteFile(beam.DoFn):
    """One log file -> GZIP TFRecord shards per output split; rejects; counts.

    Each row goes to the split TFX's ExampleGen gives it (``_PartitionFn``'s
    rule: the SHA-256 of the split key's serialized Feature, or of the whole
    deterministically serialized Example, into hash buckets), so the splits
    equal ExampleGen's. Within a split, rows are dealt in turn to the file's
    shards: a GZIP file is read whole by one worker, so later steps read a
    split in parallel only if it has several files. Rows are serialized on
    the wire format (:func:`tfrecords.bytes_example`). A shard is written
    under a temporary name and renamed when complete, so a retried or failed
    bundle never leaves a partial shard under a final name.
    """

    def __init__(self, table: tables.Table, split_config: example_gen_pb2.SplitConfig,
                 split_dirs: list[str], tmp_dir: str) -> None:
        self.table = table
        self.split_key = split_config.partition_feature_name or None
        self.buckets = list(itertools.accumulate(s.hash_buckets for s in split_config.splits))
        self.split_dirs = split_dirs
        self.tmp_dir = tmp_dir

    def process(self, file: tuple[int, int, int, str]) -> Iterator[Any]:
        first, n_shards, total_shards, path = file
        finals = {(i, j): tfrecords.shard_name(
                      os.path.join(split_dir, write_split.DEFAULT_FILE_NAME), first + j,
                      total_shards)
                  for i, split_dir in enumerate(self.split_dirs) for j in range(n_shards)}
        keys = {column: column.encode() for column in self.table.columns}
        per_split, total = [0] * len(self.split_dirs), self.buckets[-1]
        with tfrecords.ShardWriters(finals, self.tmp_dir) as shards:
            for row in tables.read_file(path, self.table, parse=tables.parse_values):
                if isinstance(row, tables.Reject):
                    yield beam.pvalue.TaggedOutput(REJECTS_TAG, row)
                    continue
                encoded = {column: tfrecords.bytes_feature(values)
                           for column, values in row.items()}
                record = tfrecords.bytes_example({keys[c]: f for c, f in encoded.items()})
                key = record if self.split_key is None else encoded[self.split_key]
                bucket = int(hashlib.sha256(key).hexdigest(), 16) % total
                split = bisect.bisect(self.buckets, bucket)
                shards.write((split, per_split[split] % n_shards), record)
                per_split[split] += 1
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, (ROWS_OK, sum(per_split)))


def shards_per_file(sizes: list[int], shard_bytes: int) -> list[tuple[int, int, int]]:
    """``(first shard, shards, all shards)`` of each file: one shard per ``shard_bytes`` read."""
    counts = [max(1, math.ceil(size / shard_bytes)) for size in sizes]
    firsts = [0, *itertools.accumulate(counts)][:-1]
    return [(first, n, sum(counts)) for first, n in zip(firsts, counts)]


def _dedupe(item: tuple[str, Iterable[tuple[str, bytes]]],
            policy: str) -> Iterator[Union[bytes, tables.Reject]]:
    """The first definition of one catalog id (by file, line), as a serialized Example.

    Args:
      item: an item id and its ``(file:line, serialized Example)`` rows.
      policy: ``error`` or ``keep_first`` (later definitions are rejects).
    """
    item_id, group = item
    ordered = sorted(group, key=lambda r: _location_key(r[0]))
    if len(ordered) > 1 and policy == "error":
        places = ", ".join(location for location, _ in ordered[:5])
        raise tables.InputError(
            f"catalog item id {item_id!r} appears {len(ordered)} times ({places}). "
            "Make catalog ids unique, or set on_bad_input.duplicate_item: keep_first.")
    yield ordered[0][1]
    for location, _ in ordered[1:]:
        yield tables.Reject(tables.DUPLICATE, location,
                          f"item id {item_id!r} already defined at {ordered[0][0]}")


def _location_key(location: str) -> tuple[str, int]:
    path, _, line = location.rpartition(":")
    return path, int(line)


def _counts_json(counts: list[tuple[str, int]]) -> str:
    return json.dumps(dict(sorted(counts)), sort_keys=True)


@beam.ptransform_fn
def _WriteReport(  # pylint: disable=invalid-name
    ok: beam.PCollection, rejects: beam.PCollection, report_dir: str
) -> beam.pvalue.PDone:
    """Writes reject lines and per-kind counts under ``report_dir``.

    ``ok`` holds ``(rows_ok, n)`` pairs; the rejects are counted here.
    """
    _ = (rejects
         | "RejectLines" >> beam.Map(lambda r: r.line())
         | "WriteRejects" >> beam.io.WriteToText(
             os.path.join(report_dir, "rejects"), file_name_suffix=".tsv"))
    bad = rejects | "KeyRejects" >> beam.Map(lambda r: (r.kind, r.n_rows))
    seed = rejects.pipeline | "SeedZero" >> beam.Create([(ROWS_OK, 0)])
    return ((ok, bad, seed)
            | "AllCounts" >> beam.Flatten()
            | "SumPerKind" >> beam.CombinePerKey(sum)
            | "ToList" >> beam.combiners.ToList()
            | "ToJson" >> beam.Map(_counts_json)
            | "WriteCounts" >> beam.io.WriteToText(
                os.path.join(report_dir, COUNTS_FILE), shard_name_template=""))


def _table_files(exec_properties: dict[str, Any], split_pattern: str
                 ) -> tuple[tables.Table, list[str]]:
    """The table read and its files matching ``split_pattern`` (sorted; none is an error)."""
    spec = spec_from_json(exec_properties[SPEC_PARAMETER])
    table = tables.table_for(spec, exec_properties[TABLE_KEY])
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    files = sorted(tf.io.gfile.glob(os.path.join(input_base, split_pattern)))
    if not files:
        raise tables.InputError(
            f"no {table.kind} file matches {os.path.join(input_base, split_pattern)}; "
            "check the spec's path and pattern.")
    return table, files


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _SplitLogFiles(  # pylint: disable=invalid-name
    pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str,
    split_config: example_gen_pb2.SplitConfig, split_dirs: list[str], tmp_dir: str
) -> beam.pvalue.PDone:
    """Reads, splits and writes the log files matching ``split_pattern``; writes the report."""
    table, files = _table_files(exec_properties, split_pattern)
    shards = shards_per_file([tf.io.gfile.stat(f).length for f in files], SHARD_BYTES)
    parsed = (pipeline
              | "Files" >> beam.Create([(*s, f) for s, f in zip(shards, files)])
              | "Spread" >> beam.Reshuffle()
              | "SplitAndWrite" >> beam.ParDo(
                  _SplitAndWriteFile(table, split_config, split_dirs, tmp_dir)).with_outputs(
                      REJECTS_TAG, COUNTS_TAG, main="none"))
    return parsed[COUNTS_TAG] | "Report" >> _WriteReport(
        parsed[REJECTS_TAG], exec_properties[REPORT_DIR_KEY])


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _ContractCsvToExample(  # pylint: disable=invalid-name
    pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str
) -> beam.PCollection:
    """Reads the files matching ``split_pattern`` into tf.Examples.

    Log rows stay ``tf.train.Example`` protos (ExampleGen splits them by a
    feature); catalog rows leave the id de-duplication serialized.
    """
    table, files = _table_files(exec_properties, split_pattern)
    parsed = (pipeline
              | "Files" >> beam.Create(files)
              | "Spread" >> beam.Reshuffle()
              | "ReadCsv" >> beam.ParDo(_ReadFile(table)).with_outputs(
                  REJECTS_TAG, COUNTS_TAG, main="rows"))
    good, rejects, ok = parsed.rows, parsed[REJECTS_TAG], parsed[COUNTS_TAG]
    if table.kind == tables.CATALOG:
        # The shuffle carries (id, (file:line, bytes)): cheap to encode, unlike Rows.
        deduped = (good
                   | "GroupById" >> beam.GroupByKey()
                   | "Dedupe" >> beam.FlatMap(_dedupe, table.duplicate_item))
        examples = deduped | "Unique" >> beam.Filter(lambda r: isinstance(r, bytes))
        dups = deduped | "Dups" >> beam.Filter(lambda r: isinstance(r, tables.Reject))
        rejects = (rejects, dups) | "AllRejects" >> beam.Flatten()
        # A duplicate was counted as read: it leaves rows_ok for duplicate_item.
        ok = (ok, dups | "UncountDups" >> beam.Map(lambda r: (ROWS_OK, -r.n_rows))
              ) | "OkAndDups" >> beam.Flatten()
    else:
        examples = good
    _ = ok | "Report" >> _WriteReport(rejects, exec_properties[REPORT_DIR_KEY])
    return examples


def read_counts(examples_uri: str) -> dict[str, int]:
    """Reads the ingest counts stored with an Examples artefact."""
    path = os.path.join(examples_uri, REPORT_DIR, COUNTS_FILE)
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """ExampleGen executor reading CSV files as the dataset spec describes."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802
        """Returns the PTransform that reads one split pattern."""
        return _ContractCsvToExample

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:  # noqa: N802
        """Ingests, then records counts and fails on an empty table or span."""
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        exec_properties = dict(exec_properties)
        exec_properties[REPORT_DIR_KEY] = os.path.join(examples.uri, REPORT_DIR)
        self._write_splits(output_dict, exec_properties)
        counts = read_counts(examples.uri)
        table = exec_properties[TABLE_KEY]
        if counts.get(ROWS_OK, 0) == 0:
            where = exec_properties[standard_component_specs.INPUT_BASE_KEY]
            raise tables.InputError(
                f"the {table} input under {where} (span {examples.span}) has no valid row "
                f"(counts: {counts}); an empty span or table cannot be ingested. "
                "Remove the empty span folder or add data; see "
                f"{os.path.join(examples.uri, REPORT_DIR)} for rejected rows.")
        for key, value in counts.items():
            examples.set_int_custom_property(key, value)

    def _write_splits(self, output_dict: dict[str, list[Any]],
                      exec_properties: dict[str, Any]) -> None:
        """ExampleGen's own ``Do`` without its shuffle of every record before writing.

        Downstream steps (statistics, the join) do not depend on record
        order, and the Trainer shuffles what it reads. Logs with output
        splits are split and written as they are read (:class:`_SplitAndWriteFile`).
        """
        keys = standard_component_specs
        input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[keys.INPUT_CONFIG_KEY], input_config)
        proto_utils.json_to_proto(exec_properties[keys.OUTPUT_CONFIG_KEY], output_config)
        outputs = output_dict[keys.EXAMPLES_KEY]
        for artifact in outputs:
            artifact.split_names = artifact_utils.encode_split_names(
                utils.generate_output_split_names(input_config, output_config))
        split_config = output_config.split_config
        if exec_properties[TABLE_KEY] == tables.LOGS and split_config.splits:
            split_dirs = [artifact_utils.get_split_uri(outputs, split.name)
                          for split in split_config.splits]
            tmp_dir = os.path.join(artifact_utils.get_single_uri(outputs), ".tmp")
            try:
                with self._make_beam_pipeline() as pipeline:
                    _ = pipeline | "InputToRecord" >> _SplitLogFiles(  # pylint: disable=no-value-for-parameter
                        exec_properties, input_config.splits[0].pattern, split_config,
                        split_dirs, tmp_dir)
            finally:
                if tf.io.gfile.exists(tmp_dir):
                    tf.io.gfile.rmtree(tmp_dir)
        else:
            self._write_records(exec_properties, outputs)
        payload_format = exec_properties.get(keys.OUTPUT_DATA_FORMAT_KEY)
        file_format = exec_properties.get(keys.OUTPUT_FILE_FORMAT_KEY)
        for artifact in outputs:
            if payload_format:
                examples_utils.set_payload_format(artifact, payload_format)
            if file_format:
                examples_utils.set_file_format(artifact,
                                               write_split.to_file_format_str(file_format))

    def _write_records(self, exec_properties: dict[str, Any], outputs: list[Any]) -> None:
        """ExampleGen's write of each split the input transform returns (the catalog)."""
        with self._make_beam_pipeline() as pipeline:
            for split, records in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                _ = (records
                     | f"Serialize[{split}]" >> beam.ParDo(write_split.MaybeSerialize())
                     | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                         os.path.join(artifact_utils.get_split_uri(outputs, split),
                                      write_split.DEFAULT_FILE_NAME),
                         file_name_suffix=".gz"))
