"""Test setup: Keras 2 for TFT/TFMA, and shared fixture builders."""

import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# The tests talk to their own servers and Beam workers on loopback: a user's
# proxy settings must not route those calls (gRPC and urllib honour them).
os.environ["no_proxy"] = os.environ["NO_PROXY"] = ",".join(
    filter(None, ["127.0.0.1,localhost", os.environ.get("no_proxy", "")]))
# Settings of the user's shell that would add output to the subprocesses the
# tests read (warnings, TF log levels) are not the tests' inputs.
for _name in ("PYTHONWARNINGS", "PYTHONDEVMODE", "TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL",
              "TF_CPP_VMODULE"):
    os.environ.pop(_name, None)

import tempfile  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tensorflow_transform.beam as tft_beam  # noqa: E402
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io  # noqa: E402

from transforms import features, preprocessing  # noqa: E402
from transforms.schema import joined_schema  # noqa: E402
from transforms.spec import DatasetSpec, parse_spec  # noqa: E402

TINY_SPEC = textwrap.dedent("""\
    name: tiny
    catalog:
      path: catalog
      id: item_id
      features:
        - {name: genre, multivalued: true, separator: "|"}
        - {name: year}
    logs:
      path: logs
      pattern: "span-{SPAN}/*.csv"
      query_item: seed
      item: item
      context_features: [device]
    split: {eval_percent: 10, key: user}
    on_bad_input: {malformed_row: reject, unknown_item: reject, duplicate_item: error}
    """)


@pytest.fixture(scope="session", autouse=True)
def _no_tfx_package_for_local_workers():
    """Tests that build TFX Beam executors directly (not through ``pipeline.runner``)
    skip TFX's packaging of itself for local workers as runs do (it leaves 50 MB
    in the temporary folder per executor)."""
    from pipeline import runner

    with runner.local_workers_need_no_package():
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The slow tests first, in file order: on parallel workers (``make test``
    runs the suite on 2) the longest start first."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


def _whole(part):
    return part


def log_source(rows, parts=3):
    """``(split, row)`` log rows as a join LogSource of ``parts`` in-memory parts."""
    from components.join import beam_join

    return beam_join.LogSource([rows[i::parts] for i in range(parts)], _whole)


def tiny_spec(root: str, **overrides: object) -> DatasetSpec:
    import yaml

    data = yaml.safe_load(TINY_SPEC)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return parse_spec(data, root)


@pytest.fixture
def tiny_root(tmp_path):
    """A hand-written tiny dataset: 4 catalog items, one log span."""
    root = str(tmp_path)
    write(os.path.join(root, "catalog", "items.csv"), """\
        item_id,genre,year,ignored
        a,x|y,1990,zzz
        b,y,1995,zzz
        c,,2000,zzz
        d,z,,zzz
        """)
    write(os.path.join(root, "logs", "span-1", "part.csv"), """\
        user,seed,item,device
        u1,a,b,mobile
        u1,b,c,mobile
        u2,a,b,desktop
        u3,c,a,mobile
        """)
    return root


def catalog_row(item_id, genre, year):
    """A joined catalog row of the tiny spec (raw features, before Transform)."""
    return {"item_item_id": [item_id], "item_genre": genre, "item_year": year,
            "query_item_id": [], "query_genre": [], "query_year": [], "context_device": [],
            features.ITEM_TRAIN_COUNT: [0], features.ITEM_BUCKET: [b"cold"],
            features.IS_CATALOG_ROW: [1]}


def log_row(seed, item, genre, device):
    """A joined log row of the tiny spec (raw features, before Transform)."""
    return {"item_item_id": [item], "item_genre": genre, "item_year": [],
            "query_item_id": [seed], "query_genre": genre, "query_year": [],
            "context_device": device,
            features.ITEM_TRAIN_COUNT: [3], features.ITEM_BUCKET: [b"head"],
            features.IS_CATALOG_ROW: [0]}


def write_transform_graph(spec, rows):
    """Analyzes ``rows`` with the project's preprocessing_fn; returns the transform folder."""
    out = tempfile.mkdtemp()
    metadata = dataset_metadata.DatasetMetadata(joined_schema(spec))
    fn = lambda inputs: preprocessing.preprocessing_fn(  # noqa: E731
        inputs, preprocessing.custom_config(spec))
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out)
    metadata_io.write_metadata(metadata, os.path.join(out, tft.TFTransformOutput.RAW_METADATA_DIR))
    return out


def serialize_example(row, keys):
    """A serialized tf.Example holding the bytes features ``keys`` of ``row``."""
    ex = tf.train.Example()
    for k in keys:
        ex.features.feature[k].bytes_list.value.extend(row[k])
    return ex.SerializeToString()


#: The end-to-end data (synthetic, 1,000 items, 3,000 pairs), shared by the
#: console and scale-out tests.
SCALEOUT_DATA = dict(n_items=1000, n_pairs=3000, spans=1, seed=0)
PORTABLE_HPARAMS = {"train_steps": 20, "steps_per_epoch": 10, "batch_size": 32,
                    "ssl_batch_size": 32, "hidden_units": [16], "embedding_dim": 8,
                    "share_towers": False, "learning_rate": 0.1}


def _shared_root(tmp_path_factory) -> pathlib.Path:
    """A folder every test process of this session sees: the session's base
    temporary folder, or with pytest-xdist the one its workers' folders share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def portable_run(tmp_path_factory):
    """One whole ``python -m pipeline run`` on Beam's portable runner, trained by 2 workers.

    BeamDagRunner orchestrates; every Beam step runs through PortableRunner
    in SDK worker processes of the CLI's worker pool, and the Trainer step
    starts 2 training worker processes (``--trainer-workers 2``). Returns
    ``(completed process, spec path, run root)``; the console test reads its
    output, the scale-out test compares its data half with the DirectRunner's.
    The run is made once per session: parallel test workers wait for the
    first one's run (a file lock) and read its result.
    """
    import fcntl
    import json
    import subprocess
    import sys

    from pipeline import worker_pools
    from pipeline.datasets import synthetic

    root = _shared_root(tmp_path_factory) / "portable"
    root.mkdir(exist_ok=True)
    run_root, result = str(root / "run"), root / "result.json"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            spec_path = synthetic.generate(synthetic.SyntheticConfig(**SCALEOUT_DATA),
                                           str(root / "data"))
            cmd = [sys.executable, "-m", "pipeline", "run", "--dataset", spec_path,
                   "--run-root", run_root, "--runner", "beam", "--beam-preset",
                   worker_pools.PORTABLE_LOCAL, "--hparams", json.dumps(PORTABLE_HPARAMS),
                   "--trainer-workers", "2"]
            env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")
            # The limit only stops a hang.
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            result.write_text(json.dumps({"spec_path": spec_path, "args": done.args,
                                          "returncode": done.returncode,
                                          "stdout": done.stdout, "stderr": done.stderr}))
    saved = json.loads(result.read_text())
    done = subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"],
                                       saved["stderr"])
    return done, saved["spec_path"], run_root
