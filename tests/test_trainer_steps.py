"""``train_steps`` is the number of optimisation steps trained, whatever the epoch size."""

import os

import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from components.trainer import hparams, run
from tests.conftest import catalog_row, log_row, tiny_spec, write_transform_graph
from transforms import features

ITEMS = [b"i%d" % k for k in range(12)]


def _serialize(row):
    ex = tf.train.Example()
    for key, values in row.items():
        if values and isinstance(values[0], int):
            ex.features.feature[key].int64_list.value.extend(values)
        else:
            ex.features.feature[key].bytes_list.value.extend(values)
    return ex.SerializeToString()


def _write(folder, rows):
    os.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, "part-0.gz"), "GZIP") as writer:
        for row in rows:
            writer.write(_serialize(row))
    return folder


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """(spec, transform folder, train split folder, catalog split folder)."""
    root = tmp_path_factory.mktemp("steps")
    spec = tiny_spec(str(root))
    logs = [log_row(ITEMS[k % 12], ITEMS[(5 * k + 1) % 12], [b"g%d" % (k % 3)], [b"mobile"])
            for k in range(96)]
    catalog = [dict(catalog_row(i, [b"g%d" % (k % 3)], [b"199%d" % (k % 4)]),
                    **{features.ITEM_TRAIN_COUNT: [8]}) for k, i in enumerate(ITEMS)]
    return (spec, write_transform_graph(spec, catalog + logs), _write(str(root / "train"), logs),
            _write(str(root / "catalog"), catalog))


@pytest.mark.parametrize("train_steps", [100, 230, 350, 3000])
def test_steps_trained_equal_train_steps(joined, tmp_path, train_steps):
    spec, transform_dir, train_dir, catalog_dir = joined
    hp = hparams.from_dict({"variant": "mns", "train_steps": train_steps,
                            "steps_per_epoch": 200, "batch_size": 8, "ssl_batch_size": 8,
                            "hidden_units": [8], "embedding_dim": 4, "share_towers": False})
    try:
        model, history = run.train(spec, hp, transform_dir, train_dir, catalog_dir,
                                   str(tmp_path / "logs"))
    finally:
        tf_config.disable_op_determinism()    # run.train enables it for the process
    assert int(model.optimizer.iterations.numpy()) == train_steps
    assert len(history.history["loss"]) == -(-train_steps // 200)   # epochs, the last shorter


@pytest.mark.parametrize("train_steps, steps_per_epoch, want", [
    (3000, 200, 25), (100, 200, 25), (230, 200, 10), (350, 200, 25), (207, 200, 1),
    (6000, 125, 25), (1000, 300, 25), (7, 200, 1), (75, 200, 25)])
def test_steps_per_execution_divides_every_epoch(train_steps, steps_per_epoch, want):
    hp = hparams.from_dict({"train_steps": train_steps, "steps_per_epoch": steps_per_epoch})
    got = run.steps_per_execution(hp)
    assert got == want
    last = train_steps % steps_per_epoch or steps_per_epoch
    assert steps_per_epoch % got == 0 and last % got == 0
    assert got <= run.MAX_STEPS_PER_EXECUTION


@pytest.mark.parametrize("strategy, workers", [("mirrored", 1), ("multi_worker_mirrored", 2)])
def test_one_step_per_execution_under_a_distribution_strategy(strategy, workers):
    hp = hparams.from_dict({"train_steps": 3000, "steps_per_epoch": 200, "strategy": strategy,
                            "workers": workers})
    assert run.steps_per_execution(hp) == 1
