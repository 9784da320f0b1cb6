"""Checks run before the pipeline starts: files exist and headers fit the spec.

The same checks run again inside the ingest executor (files may change
between the two); failing here saves starting a pipeline that cannot succeed.
"""

from __future__ import annotations

import csv
import glob
import os
import re

from transforms import tables
from transforms.spec import DatasetSpec, TableSource

_SPAN_RE = re.compile(r"^span-(\d+)$")


def spans(source: TableSource) -> list[int]:
    """Span numbers of the ``span-{SPAN}`` folders under the logs' base, sorted."""
    if not os.path.isdir(source.base):
        return []
    found = [_SPAN_RE.match(name) for name in os.listdir(source.base)]
    return sorted(int(m.group(1)) for m in found if m)


def _files(source: TableSource, kind: str, span: int | None) -> list[str]:
    if not os.path.isdir(source.base):
        raise tables.InputError(f"{kind}: folder {source.base} does not exist; fix `path` in "
                              "the dataset spec or create the folder.")
    pattern = source.pattern
    if "{SPAN}" in pattern:
        available = spans(source)
        if not available:
            raise tables.InputError(f"{kind}: no span-<N> folder under {source.base}; put the "
                                  "files in span-1/ or change `pattern` in the dataset spec.")
        chosen = available[-1] if span is None else span
        if chosen not in available:
            raise tables.InputError(f"{kind}: span {chosen} not found under {source.base}; "
                                  f"available spans: {available}.")
        pattern = pattern.replace("{SPAN}", str(chosen))
    files = sorted(glob.glob(os.path.join(source.base, pattern)))
    if not files:
        raise tables.InputError(f"{kind}: no file matches {os.path.join(source.base, pattern)}; "
                              "fix `path`/`pattern` in the dataset spec.")
    return files


def check(spec: DatasetSpec, span: int | None = None) -> dict[str, list[str]]:
    """Returns the files of each table; raises InputError naming the problem."""
    found = {}
    for kind, source in ((tables.LOGS, spec.logs), (tables.CATALOG, spec.catalog)):
        table = tables.table_for(spec, kind)
        files = _files(source, kind, span if kind == tables.LOGS else None)
        for path in files:
            with open(path, newline="", encoding=source.encoding, errors="replace") as f:
                tables.check_header(next(csv.reader(f), None), table, path)
        found[kind] = files
    return found


def input_bytes(spec: DatasetSpec) -> int:
    """Bytes of the catalog's files and of the log files of every span."""
    logs = spec.logs
    patterns = [os.path.join(spec.catalog.base, spec.catalog.pattern)]
    if "{SPAN}" in logs.pattern:
        patterns += [os.path.join(logs.base, logs.pattern.replace("{SPAN}", str(n)))
                     for n in spans(logs)]
    else:
        patterns.append(os.path.join(logs.base, logs.pattern))
    return sum(os.path.getsize(path) for pattern in patterns for path in glob.glob(pattern))
