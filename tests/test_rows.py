"""Row parsing of the contract's CSV files, on hand-written fixtures."""

import os

import pytest

from tests.conftest import tiny_spec, write
from transforms import tables


def _parse(root, spec, kind, name, text):
    source = spec.logs if kind == tables.LOGS else spec.catalog
    path = write(os.path.join(source.base, name), text)
    return path, list(tables.read_file(path, tables.table_for(spec, kind)))


def _values(row, column):
    return list(row.example.features.feature[column].bytes_list.value)


def test_catalog_rows_split_multivalued_and_keep_empty_lists(tiny_root):
    spec = tiny_spec(tiny_root)
    path = os.path.join(spec.catalog.base, "items.csv")
    out = list(tables.read_file(path, tables.table_for(spec, tables.CATALOG)))
    assert [r.key for r in out] == ["a", "b", "c", "d"]
    assert _values(out[0], "genre") == [b"x", b"y"]
    assert _values(out[2], "genre") == []           # empty cell -> empty list
    assert _values(out[3], "year") == []            # missing single value -> empty
    assert "ignored" not in out[0].example.features.feature
    assert out[1].location == f"{path}:3"


def test_malformed_rows_are_rejected_with_file_and_line(tiny_root):
    spec = tiny_spec(tiny_root)
    path, out = _parse(tiny_root, spec, tables.LOGS, "span-2/p.csv", """\
        user,seed,item,device
        u1,a,b,mobile
        u1,a,b
        u2,,b,mobile
        u3,a,"b",mobile,extra

        u4,c,d,tablet
        """)
    rejects = [r for r in out if isinstance(r, tables.Reject)]
    assert [r.location for r in rejects] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert rejects[0].reason == "expected 4 fields as in the header, got 3"
    assert rejects[1].reason == "empty required column 'seed'"
    assert all(r.kind == tables.MALFORMED for r in rejects)
    assert sum(isinstance(r, tables.Row) for r in out) == 2   # blank line skipped


def test_malformed_row_policy_error_raises(tiny_root):
    spec = tiny_spec(tiny_root, on_bad_input__malformed_row="error")
    text = "user,seed,item,device\nu,a,b,m\nu,a\n"
    with pytest.raises(tables.InputError, match=r"p\.csv:3: expected 4 fields.*malformed_row: rej"):
        _parse(tiny_root, spec, tables.LOGS, "span-2/p.csv", text)


def test_missing_column_names_file_and_column(tiny_root):
    spec = tiny_spec(tiny_root)
    with pytest.raises(tables.InputError, match=r"p\.csv: missing column\(s\) \['device'\]"):
        _parse(tiny_root, spec, tables.LOGS, "span-2/p.csv", "user,seed,item\nu,a,b\n")


def test_empty_file_is_an_error(tiny_root):
    spec = tiny_spec(tiny_root)
    with pytest.raises(tables.InputError, match="file is empty"):
        _parse(tiny_root, spec, tables.LOGS, "span-2/p.csv", "")


def test_bad_encoding_is_a_counted_reject(tiny_root):
    spec = tiny_spec(tiny_root)
    path = os.path.join(spec.logs.base, "span-2", "p.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"user,seed,item,device\nu1,a,b,m\nu2,\xff\xfe,b,m\nu3,a,b,m\n")
    out = list(tables.read_file(path, tables.table_for(spec, tables.LOGS)))
    rejects = [r for r in out if isinstance(r, tables.Reject)]
    assert len(rejects) == 1 and rejects[0].location == f"{path}:3"
    assert "not valid utf-8" in rejects[0].reason
    assert sum(isinstance(r, tables.Row) for r in out) == 2
