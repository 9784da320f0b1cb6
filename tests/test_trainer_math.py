"""Losses, masks, dropout and sampling of the Trainer against NumPy/SciPy."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from components.trainer import augment, data, hparams, losses


def _np_softmax_ce(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_p))


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_softmax_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    q, x = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))   # cosines of both signs
    tau = 0.07
    loss, logits, labels = losses.batch_softmax_loss(tf.constant(q), tf.constant(x), tau)
    assert np.allclose(logits.numpy(), _cos(q, x) / tau)
    assert loss.numpy() == pytest.approx(_np_softmax_ce(_cos(q, x) / tau), rel=1e-6)
    assert labels.numpy().tolist() == list(range(6))


def test_accidental_hits_and_logq():
    rng = np.random.default_rng(3)
    q, x = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    ids = tf.constant([7, 8, 7, 9])
    log_q = np.log([5.0, 1.0, 5.0, 2.0])
    loss, logits, _ = losses.batch_softmax_loss(tf.constant(q), tf.constant(x), 0.5,
                                                item_ids=ids, log_q=tf.constant(log_q))
    expected = _cos(q, x) / 0.5 - log_q[None, :]
    expected[0, 2] = expected[2, 0] = -1e9                  # same item 7 at rows 0 and 2
    assert np.allclose(logits.numpy(), expected)
    assert loss.numpy() == pytest.approx(_np_softmax_ce(expected), rel=1e-6)


def test_ssl_loss_uses_exactly_the_other_items_second_views():
    rng = np.random.default_rng(4)
    z, z2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    tau = 0.2
    loss, logits, _ = losses.ssl_loss(tf.constant(z), tf.constant(z2), tau)
    assert logits.shape == (5, 5)                            # 1 positive + N-1 negatives
    sim = _cos(z, z2) / tau
    manual = -np.mean([sim[i, i] - np.log(np.exp(sim[i]).sum()) for i in range(5)])
    assert loss.numpy() == pytest.approx(manual, rel=1e-6)
    # Same-view similarities are not negatives: a loss that also counted
    # s(z_i, z_j) in the denominator (NT-Xent style) differs.
    same = _cos(z, z) / tau
    with_same_view = -np.mean([sim[i, i] - np.log(
        np.exp(sim[i]).sum() + np.exp(np.delete(same[i], i)).sum()) for i in range(5)])
    assert abs(with_same_view - loss.numpy()) > 1e-2


def test_rfm_masks_are_complementary_with_n_masked():
    mask_h, mask_g = augment.rfm_masks(tf.constant(1000), 6, 4, tf.constant([1, 2], tf.int64))
    h, g = mask_h.numpy(), mask_g.numpy()
    assert (h ^ g).all() and (h.sum(axis=1) == 4).all()
    assert len({tuple(r) for r in h}) > 10                   # a different split per example
    counts = h.sum(axis=0) / len(h)
    assert np.allclose(counts, 4 / 6, atol=0.06)             # every feature equally likely


def test_cfm_masks_seed_group_per_batch():
    names = ["id", "a", "b", "c"]
    groups = {"id": ["id", "c"], "a": ["a", "b"], "b": ["b", "a"], "c": ["c", "id"]}
    table = augment.cfm_table(groups, names)
    seeds = []
    for step in range(200):
        mask_h, mask_g, index = augment.cfm_masks(table, tf.constant(8),
                                                  augment.step_seed(0, tf.constant(step), 3))
        h = mask_h.numpy()
        assert (h == h[0]).all()                              # one seed for the whole batch
        seed = names[int(index)]
        assert [names[i] for i in np.flatnonzero(h[0])] == sorted(
            groups[seed], key=names.index)                    # seed + its top-n by MI
        assert (mask_g.numpy() == ~h).all()
        seeds.append(seed)
    counts = [seeds.count(n) for n in names]
    assert stats.chisquare(counts).pvalue > 1e-3              # seeds uniform over features


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.7])
def test_value_dropout_rate_within_bounds(rate):
    n = 200_000
    ids = tf.RaggedTensor.from_row_lengths(tf.range(n, dtype=tf.int64), [4] * (n // 4))
    kept = augment.value_dropout(ids, rate, tf.constant([5, 6], tf.int64))
    share = kept.flat_values.shape[0] / n
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(share - (1 - rate)) < 5 * sigma
    empty = float(np.mean(kept.row_lengths().numpy() == 0))
    assert abs(empty - rate ** 4) < 5 * np.sqrt(rate ** 4 / (n // 4)) + 1e-3


def test_ssl_sampling_is_uniform_over_the_catalog():
    n_items, batch = 50, 100
    draws = np.concatenate([data.uniform_indices(n_items, batch, 0, tf.constant(b)).numpy()
                            for b in range(300)])
    counts = np.bincount(draws, minlength=n_items)
    assert counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-3


def test_main_stream_follows_the_logs(tmp_path):
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, 21) ** 1.2
    items = rng.choice(20, size=5000, p=weights / weights.sum())
    path = str(tmp_path / "part.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for item in items:
            ex = tf.train.Example()
            ex.features.feature["item_id"].int64_list.value.append(int(item))
            w.write(ex.SerializeToString())
    stream = data.main_stream(str(tmp_path), {"item_id": tf.io.VarLenFeature(tf.int64)}, 100, 0)
    seen = np.concatenate([b["item_id"].flat_values.numpy() for b in stream.take(100)])
    expected = np.bincount(items, minlength=20) / len(items) * len(seen)
    assert stats.chisquare(np.bincount(seen, minlength=20), expected).pvalue > 1e-3


def test_hparams_validation_names_the_key():
    assert hparams.from_dict({"variant": "so", "hidden_units": [8, 4]}).hidden_units == (8, 4)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['alhpa'\]"):
        hparams.from_dict({"alhpa": 1.0})
    with pytest.raises(ValueError, match=r"hparams.dropout_rate: 1.5 is outside .*\[0.0, 0.95\]"):
        hparams.from_dict({"dropout_rate": 1.5})
    with pytest.raises(ValueError, match="hparams.variant: got 'ssl'"):
        hparams.from_dict({"variant": "ssl"})
    with pytest.raises(TypeError, match="hparams.batch_size: expected an integer"):
        hparams.from_dict({"batch_size": 3.5})
    with pytest.raises(TypeError, match="hparams.share_towers: expected true/false"):
        hparams.from_dict({"share_towers": "yes"})
