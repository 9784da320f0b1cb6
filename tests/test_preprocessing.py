"""Golden rows through the real preprocessing_fn (TFT Beam, in memory)."""

import tempfile

import numpy as np
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from tests.conftest import catalog_row, log_row, tiny_spec
from transforms import features, preprocessing
from transforms.schema import joined_schema


def _run(spec, analyze_rows, transform_rows):
    metadata = dataset_metadata.DatasetMetadata(joined_schema(spec))
    fn = lambda inputs: preprocessing.preprocessing_fn(  # noqa: E731
        inputs, preprocessing.custom_config(spec))
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        transform_fn = (analyze_rows, metadata) | tft_beam.AnalyzeDataset(fn)
        (out, _) = ((transform_rows, metadata), transform_fn) | tft_beam.TransformDataset()
    return out


def _ids(row, key):
    return list(np.asarray(row[key]).reshape(-1))


def test_golden_rows_missing_oov_empty_and_shared_vocabulary(tiny_root):
    spec = tiny_spec(tiny_root)
    catalog = [catalog_row(b"a", [b"x", b"y"], [b"1990"]), catalog_row(b"b", [b"y"], [b"1990"]),
               catalog_row(b"c", [b"y"], [b"2000"])]
    # Log rows are analyzed too (for context features) but must not add item values:
    # genre 'w' appears only in logs, so it is OOV.
    logs = [log_row(b"a", b"b", [b"w"], [b"mobile"]), log_row(b"a", b"b", [], [b"mobile"]),
            log_row(b"c", b"a", [b"w"], [b"tablet"])]
    probe = [
        log_row(b"b", b"zzz", [b"y", b"w", b"x"], [b"desktop"]),  # unseen item/value/device
        log_row(b"a", b"a", [], []),                              # empty lists
    ]
    out = _run(spec, catalog + logs, probe)
    # Vocabularies sort by descending frequency, then by value (descending):
    # item_id a,b,c once each -> c=0, b=1, a=2; genre y(3) x(1) -> y=0, x=1;
    # device mobile(2) tablet(1) -> mobile=0, tablet=1. OOV id = vocab size.
    assert _ids(out[0], "query_item_id") == [1]
    assert _ids(out[0], "item_item_id") == [3]                     # OOV
    assert _ids(out[0], "item_genre") == [0, 2, 1]                 # w is OOV (=2)
    assert _ids(out[0], "query_genre") == _ids(out[0], "item_genre")  # one shared vocabulary
    assert _ids(out[0], "context_device") == [2]                   # unseen device -> OOV
    assert _ids(out[1], "query_item_id") == _ids(out[1], "item_item_id") == [2]
    assert _ids(out[1], "item_genre") == [] and _ids(out[1], "item_year") == []
    assert _ids(out[1], "context_device") == []
    assert _ids(out[0], features.ITEM_TRAIN_COUNT) == [3]


def test_frequency_threshold_sends_rare_values_to_oov(tiny_root):
    spec = tiny_spec(tiny_root, catalog__features=[
        {"name": "genre", "multivalued": True, "frequency_threshold": 2}, {"name": "year"}])
    catalog = [catalog_row(b"a", [b"x", b"y"], []), catalog_row(b"b", [b"y"], []),
               catalog_row(b"c", [b"y", b"z"], [])]
    out = _run(spec, catalog, [catalog_row(b"a", [b"x", b"y", b"z"], [])])
    # only y (3 items) passes the threshold: y=0, x and z -> OOV id 1.
    assert _ids(out[0], "item_genre") == [1, 0, 1]
