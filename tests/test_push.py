"""The Pushers of one blessed model push its three exports under one version."""

import os
import time

import pytest
from tfx import types
from tfx.types import standard_artifacts, standard_component_specs

from pipeline import pipeline
from pipeline.config import PipelineConfig
from pipeline.datasets import synthetic
from transforms.spec import load_spec

BLESSING_CREATED_MS = 1_796_335_349_750


def _blessing(tmp_path, created_ms):
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    os.makedirs(blessing.uri, exist_ok=True)
    open(os.path.join(blessing.uri, "BLESSED"), "w").close()
    os.utime(os.path.join(blessing.uri, "BLESSED"), (1_700_000_000.9, 1_700_000_000.9))
    blessing.set_int_custom_property("blessed", 1)
    blessing.mlmd_artifact.create_time_since_epoch = created_ms
    return blessing


def _model(tmp_path, name):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "models" / name)
    os.makedirs(os.path.join(model.uri, "Format-Serving", "variables"), exist_ok=True)
    with open(os.path.join(model.uri, "Format-Serving", "saved_model.pb"), "w") as f:
        f.write(name)
    return model


def _push_all(tmp_path, blessing):
    """Runs the executor of each of the pipeline's Pushers; returns their versions."""
    spec = load_spec(synthetic.generate(synthetic.SyntheticConfig(n_items=20, n_pairs=50),
                                        str(tmp_path / "data")))
    config = PipelineConfig(spec=spec, run_root=str(tmp_path / "run"))
    versions = {}
    for name in pipeline.served_names(config):
        node = pipeline.pusher(config, name, types.Channel(type=standard_artifacts.Model),
                               types.Channel(type=standard_artifacts.ModelBlessing))
        executor = node.executor_spec.executor_class()
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / "pushed" / name)
        executor.Do({standard_component_specs.MODEL_KEY: [_model(tmp_path, name)],
                     standard_component_specs.MODEL_BLESSING_KEY: [blessing]},
                    {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
                    node.exec_properties)
        versions[name] = pushed.get_string_custom_property("pushed_version")
        folder = os.path.join(config.serving_root, name, versions[name])
        with open(os.path.join(folder, "saved_model.pb")) as f:
            assert f.read() == name
    return versions


@pytest.fixture
def ticking_clock(monkeypatch):
    """A wall clock that moves on by a second each time it is read."""
    now = [1_796_335_349.5]

    def tick():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(time, "time", tick)


def test_three_pushes_share_the_blessings_version(tmp_path, ticking_clock):
    versions = _push_all(tmp_path, _blessing(tmp_path, BLESSING_CREATED_MS))
    assert set(versions.values()) == {str(BLESSING_CREATED_MS // 1000)}, versions


def test_without_a_metadata_time_the_version_is_the_blessed_files(tmp_path, ticking_clock):
    versions = _push_all(tmp_path, _blessing(tmp_path, 0))
    assert set(versions.values()) == {"1700000000"}, versions


def test_a_version_cut_short_is_copied_again(tmp_path):
    blessing = _blessing(tmp_path, BLESSING_CREATED_MS)
    first = _push_all(tmp_path, blessing)
    folder = os.path.join(str(tmp_path / "run"), "serving", "ssl4rec", first["ssl4rec"])
    os.remove(os.path.join(folder, "saved_model.pb"))           # a push killed midway
    assert _push_all(tmp_path, blessing) == first               # reads saved_model.pb back
