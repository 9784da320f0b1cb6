"""The CSV side of the data contract: table definitions, header checks, row parsing.

Shared by ingestion, the join, preflight checks and the run summary (pure
Python, no Beam).

A row either becomes a ``tf.train.Example`` or a :class:`Reject` that names
the file, the line and the reason. Structural problems of a whole file (no
header, a missing column) raise :class:`InputError` at once.
"""

from __future__ import annotations

import csv
import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import tensorflow as tf

from transforms.spec import DatasetSpec, is_url

LOGS, CATALOG = "logs", "catalog"

MALFORMED = "malformed_row"
DUPLICATE = "duplicate_item"
UNKNOWN = "unknown_item"


class InputError(ValueError):
    """Bad input data; the message names the file, row or column and the fix."""


@dataclasses.dataclass(frozen=True)
class Table:
    """What the ingest step needs to know about one table of the contract.

    Attributes:
      kind: ``logs`` or ``catalog``.
      columns: columns the pipeline reads, in output order.
      id_columns: columns that must be non-empty in every row.
      separators: separator of each multi-valued column.
      malformed_row: ``reject`` or ``error``.
      duplicate_item: ``error`` or ``keep_first`` (catalog only).
      encoding: text encoding of the files.
    """

    kind: str
    columns: tuple[str, ...]
    id_columns: tuple[str, ...]
    separators: dict[str, str]
    malformed_row: str
    duplicate_item: str
    encoding: str


def table_for(spec: DatasetSpec, kind: str) -> Table:
    """Builds the :class:`Table` of ``kind`` (``logs`` or ``catalog``)."""
    if kind == LOGS:
        ids = [spec.query_item_column, spec.item_column]
        if spec.split_key:
            ids.append(spec.split_key)
        return Table(LOGS, spec.log_columns(), tuple(ids),
                     {f.name: f.separator for f in spec.context_features if f.multivalued},
                     spec.malformed_row, spec.duplicate_item, spec.logs.encoding)
    if kind == CATALOG:
        return Table(CATALOG, spec.catalog_columns(), (spec.item_id,),
                     {f.name: f.separator for f in spec.item_features if f.multivalued},
                     spec.malformed_row, spec.duplicate_item, spec.catalog.encoding)
    raise ValueError(f"table kind must be '{LOGS}' or '{CATALOG}', got {kind!r}")


@dataclasses.dataclass(frozen=True)
class Reject:
    """A row that was not ingested.

    Attributes:
      kind: one of ``malformed_row``, ``duplicate_item``, ``unknown_item``.
      location: ``file:line`` (or an item id where no line is known).
      reason: human-readable reason.
      n_rows: input rows this reject stands for.
    """

    kind: str
    location: str
    reason: str
    n_rows: int = 1

    def line(self) -> str:
        """One tab-separated line for the rejects report."""
        return f"{self.kind}\t{self.location}\t{self.n_rows}\t{self.reason}"


@dataclasses.dataclass(frozen=True)
class Row:
    """An ingested row with where it came from.

    Attributes:
      key: the row's item id (catalog) or None (logs).
      location: ``file:line``.
      example: the row as a ``tf.train.Example``.
    """

    key: Optional[str]
    location: str
    example: tf.train.Example


def check_header(header: Optional[list[str]], table: Table, path: str) -> dict[str, int]:
    """Maps each needed column to its index in ``header``.

    Raises:
      InputError: the file is empty or lacks a needed column.
    """
    if not header:
        raise InputError(
            f"{path}: file is empty; every {table.kind} file needs a header row "
            f"with columns {list(table.columns)}.")
    stripped = [h.strip() for h in header]
    missing = [c for c in table.columns if c not in stripped]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing} in the header {stripped}. Add them "
            "to the file or change the dataset spec to name the right columns.")
    return {c: stripped.index(c) for c in table.columns}


def _values(cell: str, separator: Optional[str]) -> list[bytes]:
    cell = cell.strip()
    if separator is None:
        return [cell.encode()] if cell else []
    return [v.strip().encode() for v in cell.split(separator) if v.strip()]


def parse_values(fields: list[str], width: int, index: dict[str, int], table: Table,
                 location: str) -> Union[dict[str, list[bytes]], Reject]:
    """The CSV ``fields`` of one row as ``{column: values}`` (the table's columns) or a Reject."""
    if len(fields) != width:
        return Reject(MALFORMED, location,
                      f"expected {width} fields as in the header, got {len(fields)}")
    row = {}
    for column in table.columns:
        values = _values(fields[index[column]], table.separators.get(column))
        if column in table.id_columns and not values:
            return Reject(MALFORMED, location, f"empty required column '{column}'")
        row[column] = values
    return row


def parse_row(fields: list[str], width: int, index: dict[str, int], table: Table,
              location: str) -> Union[Row, Reject]:
    """Turns the CSV ``fields`` of one row into a :class:`Row` or :class:`Reject`."""
    values = parse_values(fields, width, index, table, location)
    if isinstance(values, Reject):
        return values
    example = tf.train.Example()
    for column in table.columns:
        example.features.feature[column].bytes_list.value.extend(values[column])
    key = None
    if table.kind == CATALOG:
        key = fields[index[table.id_columns[0]]].strip()
    return Row(key, location, example)


def _decoded(lines: Iterable[bytes], encoding: str, path: str,
             bad: list[Reject]) -> Iterator[str]:
    for number, raw in enumerate(lines, start=1):
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as e:
            bad.append(Reject(MALFORMED, f"{path}:{number}", f"not valid {encoding}: {e.reason}"))
            yield ""


def read_file(path: str, table: Table, parse: Callable[..., Any] = parse_row
              ) -> Iterator[Union[Row, Reject]]:
    """Reads one CSV file of ``table``; yields rows and rejects in file order.

    ``parse`` turns a row's fields into what is yielded: :func:`parse_row`
    (a :class:`Row`) or :func:`parse_values` (``{column: values}``).

    Raises:
      InputError: a structural problem, or a malformed row when the spec's
        ``malformed_row`` policy is ``error``.
    """
    bad: list[Reject] = []
    # Python's own file reads lines about 10x faster than GFile; GFile for remote files.
    with (tf.io.gfile.GFile(path, "rb") if is_url(path) else open(path, "rb")) as f:
        reader = csv.reader(_decoded(f, table.encoding, path, bad))
        header = next(reader, None)
        index = check_header(header, table, path)
        width = len(header)
        for fields in reader:
            location = f"{path}:{reader.line_num}"
            if bad:
                result = bad.pop()
            elif not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            else:
                result = parse(fields, width, index, table, location)
            if isinstance(result, Reject) and table.malformed_row == "error":
                raise InputError(
                    f"{result.location}: {result.reason}. Fix the row, or set "
                    "on_bad_input.malformed_row: reject to count and skip such rows.")
            yield result

