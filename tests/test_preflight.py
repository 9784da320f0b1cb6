"""Checks before the run: missing folders, spans, files and columns are named."""

import os

import pytest

from pipeline import preflight
from tests.conftest import tiny_spec, write
from transforms import tables


def test_finds_files_of_the_latest_span(tiny_root):
    spec = tiny_spec(tiny_root)
    write(os.path.join(spec.logs.base, "span-3", "a.csv"), "user,seed,item,device\nu,a,b,m\n")
    found = preflight.check(spec)
    assert [os.path.basename(os.path.dirname(p)) for p in found["logs"]] == ["span-3"]
    assert preflight.spans(spec.logs) == [1, 3]
    assert len(preflight.check(spec, span=1)["logs"]) == 1


def test_missing_folder_span_and_column_are_named(tiny_root):
    spec = tiny_spec(tiny_root)
    with pytest.raises(tables.InputError, match=r"span 7 not found .* available spans: \[1\]"):
        preflight.check(spec, span=7)
    write(os.path.join(spec.catalog.base, "items.csv"), "item_id,genre\na,x\n")
    with pytest.raises(tables.InputError, match=r"items.csv: missing column\(s\) \['year'\]"):
        preflight.check(spec)
    moved = tiny_spec(tiny_root, catalog__path="nowhere")
    with pytest.raises(tables.InputError, match="catalog: folder .*nowhere does not exist"):
        preflight.check(moved)


def test_input_bytes_and_the_local_runner_switch_at_its_boundary(tiny_root):
    from pipeline.config import (
        IN_MEMORY_BEAM_ARGS,
        IN_MEMORY_MAX_INPUT_BYTES,
        LOCAL_BEAM_ARGS,
        local_beam_args,
    )

    spec = tiny_spec(tiny_root)
    write(os.path.join(spec.logs.base, "span-2", "a.csv"), "user,seed,item,device\nu,a,b,m\n")
    files = [os.path.join(dirpath, name) for dirpath, _, names in os.walk(tiny_root)
             for name in names if name.endswith(".csv")]
    assert preflight.input_bytes(spec) == sum(os.path.getsize(f) for f in files)  # every span
    assert local_beam_args(IN_MEMORY_MAX_INPUT_BYTES) == IN_MEMORY_BEAM_ARGS
    assert local_beam_args(IN_MEMORY_MAX_INPUT_BYTES + 1) == LOCAL_BEAM_ARGS
