"""The join executor run directly: it refuses anomalous inputs and empty training data."""

import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx import types
from tfx.types import artifact_utils, standard_artifacts

from components.join import anomalies
from components.join import executor as join_executor
from components.join.component import JoinExamples
from tests.conftest import tiny_spec, write
from tests.test_ingest_executor import _ingest
from transforms import tables


def _anomalies(tmp_path, name, found):
    """An ExampleAnomalies artefact as ExampleValidator writes it, from real TFDV.

    ``found``: validate data with a column the schema lacks (one anomaly),
    else the data the schema was inferred from (none).
    """
    seen = pd.DataFrame({"year": ["1990", "1995", "1990"]})
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(seen))
    new = pd.DataFrame({"year": ["1990", "2035"], "rating": ["5", "4"]}) if found else seen
    result = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(new), schema)
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / name)
    artifact.split_names = artifact_utils.encode_split_names(["train"])
    folder = artifact_utils.get_split_uri([artifact], "train")
    os.makedirs(folder)
    with open(os.path.join(folder, anomalies.ANOMALIES_FILE), "wb") as f:
        f.write(result.SerializeToString())
    return artifact


def _join(spec, tmp_path, logs, logs_found=False, **properties):
    catalog = _ingest(spec, tables.CATALOG, "*.csv", tmp_path / "catalog")
    component = JoinExamples(spec, *(types.Channel(type=t) for t in (
        standard_artifacts.Examples, standard_artifacts.Examples,
        standard_artifacts.ExampleAnomalies, standard_artifacts.ExampleAnomalies)))
    examples, schema = standard_artifacts.Examples(), standard_artifacts.Schema()
    examples.uri, schema.uri = str(tmp_path / "joined"), str(tmp_path / "schema")
    join_executor.Executor().Do(
        {join_executor.LOGS_KEY: [logs], join_executor.CATALOG_KEY: [catalog],
         join_executor.LOGS_ANOMALIES_KEY: [_anomalies(tmp_path, "la", logs_found)],
         join_executor.CATALOG_ANOMALIES_KEY: [_anomalies(tmp_path, "ca", False)]},
        {join_executor.EXAMPLES_KEY: [examples], join_executor.SCHEMA_KEY: [schema]},
        {**component.exec_properties, **properties})
    return examples


def test_validator_anomalies_stop_the_join_before_it_writes(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    logs = _ingest(spec, tables.LOGS, "span-1/*.csv", tmp_path / "logs")
    assert _join(spec, tmp_path / "clean", logs).get_int_custom_property("train") > 0
    with pytest.raises(anomalies.AnomaliesFoundError,
                       match=r"(?s)anomalies in the logs data.*logs/train: feature 'rating': "
                             r"New column.*update the schema"):
        _join(spec, tmp_path / "anomalous", logs, logs_found=True)
    assert not os.path.exists(tmp_path / "anomalous" / "joined")


def test_no_training_pairs_left_is_an_input_error(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    write(os.path.join(spec.logs.base, "span-2", "p.csv"), """\
        user,seed,item,device
        u1,a,zz,mobile
        u2,yy,b,mobile
        """)
    logs = _ingest(spec, tables.LOGS, "span-2/*.csv", tmp_path / "logs")
    with pytest.raises(tables.InputError,
                       match=r"no training pairs left after joining logs with the catalog .*"
                             r"'rejected_unknown_item': 2.*check that the logs' item ids"):
        _join(spec, tmp_path, logs)
