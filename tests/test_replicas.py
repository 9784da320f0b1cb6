"""Over 2 replicas, the main and SSL losses and their gradients are the global batch's.

Each replica holds half the batch; its queries (first views) also score the
other replica's positives (second views), gathered with ``all_gather``, and
its loss is scaled by 1/replicas. The sum over replicas of the losses, and of
the gradients, must equal one process's loss and gradients on the whole
batch; and one ``train_step`` of the model over 2 replicas must move the
weights as one process's step on the whole batch does. Runs in subprocesses:
2 logical CPUs must be set before TensorFlow starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from components.trainer import losses
    from components.trainer.model import _all_replicas, _other_replicas, _replicas

    rng = np.random.default_rng(0)
    n, d = 8, 4
    query = tf.constant(rng.normal(size=(n, d)), tf.float32)
    item = tf.constant(rng.normal(size=(n, d)), tf.float32)
    extra = tf.constant(rng.normal(size=(n, d)), tf.float32)
    ids = tf.constant([1, 2, 3, 1, 5, 6, 2, 8], tf.int64)      # repeats: accidental hits
    extra_ids = tf.constant([9, 1, 10, 11, 12, 6, 13, 14], tf.int64)
    log_q = tf.constant(rng.normal(size=n), tf.float32)
    extra_log_q = tf.constant(rng.normal(size=n), tf.float32)
    w = tf.Variable(tf.eye(d) + 0.1)

    def main_loss(q, i, e, ids_, eids, lq, elq, replicated):
        q, i, e = q @ w, i @ w, e @ w
        extra_items, extra_ids_, extra_lq = [e], [eids], [elq]
        if replicated:
            others, everyone = _other_replicas(i, ids_, lq), _all_replicas(e, eids, elq)
            extra_items, extra_ids_, extra_lq = [list(block) for block in zip(others, everyone)]
        return losses.batch_softmax_loss(
            q, i, 0.1, item_ids=ids_, log_q=lq, extra_items=tf.concat(extra_items, 0),
            extra_ids=tf.concat(extra_ids_, 0), extra_log_q=tf.concat(extra_lq, 0))[0]

    def ssl(z, zp, ids_, replicated):
        z, zp = z @ w, zp @ w
        extra = {}
        if replicated:
            views, view_ids = _other_replicas(zp, ids_)
            extra = {"extra_views": views, "extra_ids": view_ids}
        return losses.ssl_loss(z, zp, 0.2, item_ids=ids_, **extra)[0]

    def one_process():
        with tf.GradientTape() as tape:
            total = main_loss(query, item, extra, ids, extra_ids, log_q, extra_log_q, False) \\
                + ssl(item, extra, ids, False)
        return total.numpy(), tape.gradient(total, w).numpy()

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    half = n // 2

    def replica_step():
        r = tf.distribute.get_replica_context().replica_id_in_sync_group
        part = lambda x: x[r * half:(r + 1) * half]
        with tf.GradientTape() as tape:
            total = main_loss(part(query), part(item), part(extra), part(ids), part(extra_ids),
                              part(log_q), part(extra_log_q), True) \\
                + ssl(part(item), part(extra), part(ids), True)
            scaled = total / _replicas()
        return scaled, tape.gradient(scaled, w)

    with strategy.scope():
        losses_, grads = strategy.run(tf.function(replica_step))
    total = sum(v.numpy() for v in strategy.experimental_local_results(losses_))
    grad = sum(v.numpy() for v in strategy.experimental_local_results(grads))
    expected_total, expected_grad = one_process()
    np.testing.assert_allclose(total, expected_total, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    print("EQUAL", total, expected_total)
""")


MODEL_STEP = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import tf_keras
    from components.trainer import hparams
    from components.trainer.model import FeatureLayout, Sampling, TwoTowerSSL
    from tests.test_trainer_math import _batch
    from transforms import features

    names = ("item_id", "genre", "year")
    layout = FeatureLayout(item_names=names, multivalued=("genre",), query_item_names=names,
                           context_names=(), vocab_sizes={n: 12 for n in names}, id_name="item_id")
    hp = hparams.from_dict({"variant": sys.argv[1], "hidden_units": [8, 4], "embedding_dim": 4,
                            "batch_size": 16, "ssl_batch_size": 8})
    rng = np.random.default_rng(0)
    main = _batch(rng, 16, names, 12, (features.item_key, features.query_key))
    ssl = _batch(rng, 8, names, 12, (features.item_key,))

    def model():
        m = TwoTowerSSL(layout, hp, None, Sampling(train_pairs=40.0, n_items=12.0))
        m.compile(optimizer=tf_keras.optimizers.SGD(1.0))
        m(main)                              # builds every weight
        m.optimizer.build(m.trainable_variables)
        return m

    tf_keras.utils.set_random_seed(0)
    one = model()
    start = [w.numpy() for w in one.trainable_variables]
    one.train_step((main, ssl))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two = model()
        for w, value in zip(two.trainable_variables, start):
            w.assign(value)

    def half(context):
        r, h, hs = context.replica_id_in_sync_group, 8, 4
        return ({k: v[r * h:(r + 1) * h] for k, v in main.items()},
                {k: v[r * hs:(r + 1) * hs] for k, v in ssl.items()})

    data = strategy.experimental_distribute_values_from_function(half)
    strategy.run(tf.function(two.train_step), args=(data,))
    moved = differ = 0.0
    for a, b, s in zip(one.trainable_variables, two.trainable_variables, start):
        moved = max(moved, float(np.abs(a.numpy() - s).max()))
        differ = max(differ, float(np.abs(a.numpy() - b.numpy()).max()))
    # float32 sums in another order differ by ~1e-5; a wrong candidate set or
    # scaling moves the weights differently by a share of the step itself.
    assert moved > 0.05 and differ < 1e-3 * moved, (moved, differ)
    print("EQUAL", moved, differ)
""")


def _run(script, *args):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-5000:]
    assert "EQUAL" in done.stdout


def test_two_replicas_compute_the_global_batch_loss_and_gradient():
    _run(SCRIPT)


# Variants whose steps draw no random augmentation (the seeds differ per replica).
@pytest.mark.parametrize("variant", ["baseline", "mns", "so", "mns_so"])
def test_a_model_step_over_two_replicas_equals_one_process_step(variant):
    _run(MODEL_STEP, variant)
