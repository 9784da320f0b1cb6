"""Losses, masks, dropout and sampling of the Trainer against NumPy/SciPy."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from components.trainer import augment, cost, data, hparams, losses
from transforms import features


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
    spec = {"item_id": tf.io.VarLenFeature(tf.int64)}
    stream = data.main_stream(str(tmp_path), lambda x: data.to_ragged(tf.io.parse_example(x, spec)),
                              100, 0)
    seen = np.concatenate([b["item_id"].flat_values.numpy() for b in stream.take(100)])
    expected = np.bincount(items, minlength=20) / len(items) * len(seen)
    assert stats.chisquare(np.bincount(seen, minlength=20), expected).pvalue > 1e-3


def test_training_input_runs_without_tf_data_autotuning(tmp_path):
    """Deleting an autotuned iterator waits for the autotuner's thread (up to a minute)."""
    path = str(tmp_path / "part.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        w.write(b"x")
    assert tf.data.Dataset.range(3).options().autotune.enabled is None      # TF's default: on
    main = data.main_stream(str(tmp_path), lambda x: {"x": x}, 1, 0)
    ssl = tf.data.Dataset.range(5).map(lambda i: {"i": i})
    for stream in (data.training_stream(main, ssl), data.training_stream(main, None),
                   data.tfrecords.split_dataset(str(tmp_path))):
        assert stream.options().autotune.enabled is False


def test_hparams_round_trip_through_custom_config():
    for hp in (hparams.HParams(), hparams.from_dict({"variant": "mns", "share_towers": True,
                                                     "ssl_temperature": 0.2, "n_masked": 2})):
        assert hparams.from_dict(hp.to_dict()) == hp


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


def _masked_ce(logits, mask):
    return _np_softmax_ce(np.where(mask, -1e9, logits))


def test_query_item_columns_are_masked():
    # Item-to-item with shared towers: row i's query item is row j's positive
    # (j != i) -> logit (i, j) is masked; the diagonal (the positive) never is.
    rng = np.random.default_rng(5)
    q, x = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    query_ids = np.array([3, 1, 4, 1, 5])
    item_ids = np.array([1, 4, 2, 6, 1])
    loss, logits, _ = losses.batch_softmax_loss(
        tf.constant(q), tf.constant(x), 0.1, item_ids=tf.constant(item_ids),
        query_ids=tf.constant(query_ids))
    raw = _cos(q, x) / 0.1
    mask = (query_ids[:, None] == item_ids[None, :]) | (item_ids[:, None] == item_ids[None, :])
    np.fill_diagonal(mask, False)
    assert mask[1, 0] and mask[1, 4] and mask[3, 0] and mask[0, 4] and not mask[2, 2]
    assert np.allclose(logits.numpy(), np.where(mask, -1e9, raw))
    assert loss.numpy() == pytest.approx(_masked_ce(raw, mask), rel=1e-6)
    # Accidental hits kept: only the query-item columns are masked.
    _, logits, _ = losses.batch_softmax_loss(
        tf.constant(q), tf.constant(x), 0.1, item_ids=tf.constant(item_ids),
        query_ids=tf.constant(query_ids), remove_accidental_hits=False)
    only_query = query_ids[:, None] == item_ids[None, :]
    np.fill_diagonal(only_query, False)
    assert np.allclose(logits.numpy(), np.where(only_query, -1e9, raw))
    with pytest.raises(ValueError, match="pass item_ids too"):
        losses.batch_softmax_loss(tf.constant(q), tf.constant(x), 0.1,
                                  query_ids=tf.constant(query_ids))


def test_ssl_loss_masks_repeated_draws_of_an_item():
    rng = np.random.default_rng(6)
    z, z2 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    ids = np.array([10, 11, 10, 12, 13, 11])        # items 10 and 11 drawn twice
    loss, logits, _ = losses.ssl_loss(tf.constant(z), tf.constant(z2), 0.2,
                                      item_ids=tf.constant(ids))
    mask = ids[:, None] == ids[None, :]
    np.fill_diagonal(mask, False)
    assert mask.sum() == 4
    assert loss.numpy() == pytest.approx(_masked_ce(_cos(z, z2) / 0.2, mask), rel=1e-6)


def test_extra_negatives_with_mixed_logq():
    # Mixed negative sampling: M uniform catalog items join the N in-batch
    # candidates; logQ subtracts log(B c / T + B' / N_items) from every column.
    rng = np.random.default_rng(7)
    q, x, extra = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    ids, extra_ids = np.array([1, 2, 3, 1]), np.array([2, 9, 8])
    counts, extra_counts = np.array([9.0, 3.0, 1.0, 9.0]), np.array([3.0, 0.0, 2.0])
    t, n_items, b, b2 = 100.0, 50.0, 4, 3
    log_q = np.log(b * counts / t + b2 / n_items)
    extra_log_q = np.log(b * extra_counts / t + b2 / n_items)
    loss, logits, labels = losses.batch_softmax_loss(
        tf.constant(q), tf.constant(x), 0.3, item_ids=tf.constant(ids), log_q=tf.constant(log_q),
        extra_items=tf.constant(extra), extra_ids=tf.constant(extra_ids),
        extra_log_q=tf.constant(extra_log_q))
    raw = _cos(q, np.vstack([x, extra])) / 0.3 - np.concatenate([log_q, extra_log_q])[None, :]
    all_ids = np.concatenate([ids, extra_ids])
    mask = ids[:, None] == all_ids[None, :]
    mask[np.arange(4), np.arange(4)] = False
    assert mask[0, 3] and mask[1, 4] and logits.shape == (4, 7)
    assert np.allclose(logits.numpy(), np.where(mask, -1e9, raw))
    assert loss.numpy() == pytest.approx(_masked_ce(raw, mask), rel=1e-6)
    assert labels.numpy().tolist() == [0, 1, 2, 3]


def test_variant_table_drives_the_split_sizes():
    table = hparams.VARIANTS
    assert set(vars(table["baseline"]).values()) == {"none", "paper", False}
    assert table["mns"].extra_negatives and not table["mns"].ssl_loss
    assert table["mns"].needs_catalog and not table["fd"].needs_catalog
    # k = 4 (MovieLens-1M): the paper's seed + floor(k/2) masks 3 and keeps 1;
    # balanced masks 2 and keeps 2. k = 5: 3 vs 2.
    assert [table["cfm"].n_masked(k) for k in (4, 5, 12)] == [3, 3, 7]
    assert [table["cfm_balanced"].n_masked(k) for k in (4, 5, 12)] == [2, 2, 6]
    hp = hparams.from_dict({"variant": "cfm_balanced", "n_masked": 3})
    assert hp.masked_count(4) == 3 and hparams.HParams().logq_correction
    with pytest.raises(ValueError, match="masking must be one of"):
        hparams.Variant(masking="cfm2", ssl_loss=True)
    with pytest.raises(ValueError, match="needs ssl_loss=True"):
        hparams.Variant(masking="cfm")


def _batch(rng, n, names, vocab, prefix_keys):
    out = {}
    for name in names:
        lengths = rng.integers(1, 3, n) if name == "genre" else np.ones(n, int)
        values = rng.integers(0, vocab, lengths.sum())
        ragged = tf.RaggedTensor.from_row_lengths(tf.constant(values, tf.int64), lengths)
        for key_fn in prefix_keys:
            out[key_fn(name)] = ragged
    out[features.ITEM_TRAIN_COUNT] = tf.constant(rng.integers(0, 5, (n, 1)), tf.int64)
    return out


#: Forward multiply-adds of a step of the model below, by hand: 3 features of
#: width 4 -> 8 -> 4 is 12*8 + 8*4 = 128 per row; 16 queries and 16
#: positives, 8 uniform items (mns) and 8 per SSL view; logits 16 x 16 (or
#: 16 x 24 with the 8 extra negatives) and 8 x 8 (SSL), 4 wide.
STEP_MACS = {"baseline": 32 * 128 + 1024, "fd": 32 * 128 + 1024,
             "so": 40 * 128 + 1024 + 256, "mns": 40 * 128 + 1536,
             **{v: 48 * 128 + 1024 + 256 for v in ("rfm", "cfm", "cfm_balanced",
                                                  "independent_masks", "cfm_no_dropout",
                                                  "dropout_only")},
             "mns_cfm": 56 * 128 + 1536 + 256, "mns_so": 48 * 128 + 1536 + 256}


@pytest.mark.parametrize("variant", list(hparams.VARIANTS))
def test_every_variant_trains_and_its_main_loss_falls(variant):
    import tf_keras

    from components.trainer.model import FeatureLayout, Sampling, TwoTowerSSL

    names = ("item_id", "genre", "year")
    layout = FeatureLayout(item_names=names, multivalued=("genre",), query_item_names=names,
                           context_names=(), vocab_sizes={n: 12 for n in names}, id_name="item_id")
    hp = hparams.from_dict({"variant": variant, "hidden_units": [8, 4], "embedding_dim": 4,
                            "batch_size": 16, "ssl_batch_size": 8})
    tf_keras.utils.set_random_seed(0)
    groups = {"item_id": ["item_id", "genre"], "genre": ["genre", "year"],
              "year": ["year", "genre"]}
    model = TwoTowerSSL(layout, hp, groups, Sampling(train_pairs=40.0, n_items=12.0))
    model.compile(optimizer=tf_keras.optimizers.Adagrad(0.05))
    rng = np.random.default_rng(0)
    # Queries other than their items: the loss starts near log(16), not at 0.
    main = {**_batch(rng, 16, names, 12, (features.item_key,)),
            **{k: v for k, v in _batch(rng, 16, names, 12, (features.query_key,)).items()
               if k != features.ITEM_TRAIN_COUNT}}
    ssl = _batch(rng, 8, names, 12, (features.item_key,))
    step = tf.function(model.train_step)
    first = {k: float(v) for k, v in step((main, ssl)).items()}
    for _ in range(30):
        step((main, ssl))
    for tracker in model.metrics:
        tracker.reset_state()
    logs = {k: float(v) for k, v in step((main, ssl)).items()}     # the 32nd step alone
    assert np.isfinite(logs["loss"]) and logs["main_loss"] > 0
    assert logs["main_loss"] < first["main_loss"], (first, logs)   # it learns the batch
    assert ("ssl_loss" in logs) == hparams.VARIANTS[variant].ssl_loss
    assert model.shared             # item-to-item without context: one tower
    # The dense-work count matches the built tower and the hand count.
    assert cost.mlp_macs(3, hp) == sum(int(np.prod(layer.kernel.shape))
                                       for layer in model.item_tower.mlp.layers)
    assert cost.step_macs(layout, hp) == STEP_MACS[variant]


def test_step_macs_counts_a_separate_query_tower_by_its_inputs():
    from components.trainer.model import FeatureLayout

    layout = FeatureLayout(item_names=("item_id", "genre", "year"), multivalued=(),
                           query_item_names=("item_id",), context_names=("device",),
                           vocab_sizes={}, id_name="item_id")
    hp = hparams.from_dict({"variant": "mns", "hidden_units": [8, 4], "embedding_dim": 4,
                            "batch_size": 16, "ssl_batch_size": 8})
    # Query tower: 2 inputs, 8*8 + 8*4 = 96 per row; item tower 128 per row
    # over 16 positives and 8 uniform items; logits 16 x 24, 4 wide.
    assert cost.step_macs(layout, hp) == 16 * 96 + 24 * 128 + 16 * 24 * 4


def test_one_tower_call_equals_a_call_per_part():
    from components.trainer.model import _tower_many
    from components.trainer.towers import FeatureEmbedding, Tower

    names = ("item_id", "genre", "year")
    embeddings = {n: FeatureEmbedding(12, 4, name=f"e_{n}") for n in names}
    tower = Tower(names, embeddings, [8, 4], "relu")
    rng = np.random.default_rng(3)
    parts = [({n: v for n, v in _batch(rng, size, names, 12, (lambda n: n,)).items()
               if n in names}, mask)
             for size, mask in ((5, None), (7, tf.constant(rng.random((7, 3)) < 0.5)),
                                (4, None), (6, tf.constant(rng.random((6, 3)) < 0.5)))]
    together = _tower_many(tower, parts)
    for (inputs, mask), got in zip(parts, together):
        np.testing.assert_allclose(got.numpy(), tower(inputs, mask).numpy(), atol=1e-6)


def test_feature_embedding_pools_the_mean_or_the_default():
    from components.trainer.towers import FeatureEmbedding

    layer = FeatureEmbedding(6, 3)
    ids = tf.ragged.constant([[1, 4], [], [5], [2, 2, 0], [9]], dtype=tf.int64)
    masked = tf.constant([False, False, True, False, False])
    got = layer(ids, masked).numpy()
    table, default = layer.table.embeddings.numpy(), layer.default.numpy()
    want = [table[[1, 4]].mean(0), default, default, table[[2, 2, 0]].mean(0),
            table[5]]                                    # id 9 >= vocab: clipped to 5
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-6)


def test_feature_embedding_reads_only_the_batch_rows_and_updates_them_sparsely():
    """After a sparse update TF copies a variable whole on every dense read (a
    cost that grows with the vocabulary): the table is only gathered from."""
    from components.trainer.towers import FeatureEmbedding

    layer = FeatureEmbedding(50, 3)
    ids = tf.ragged.constant([[7, 3, 7], [], [3], [41]], dtype=tf.int64)
    layer(ids)
    table = layer.table.embeddings

    @tf.function
    def grads(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * tf.constant([[1.0, 2.0, 3.0]]))
        return tape.gradient(loss, table)

    graph = grads.get_concrete_function(ids).graph
    handle = next(inner for outer, inner in graph.captures if outer is table.handle)
    readers = {op.type for op in graph.get_operations()
               if any(t is handle for t in op.inputs)}
    assert readers == {"ResourceGather"}
    got = grads(ids)
    assert isinstance(got, tf.IndexedSlices)
    dense = tf.convert_to_tensor(got).numpy()
    want = np.zeros((50, 3))
    for row in ([7, 3, 7], [3], [41]):        # d(sum_j w_j mean_row[j]) / d table[i]
        for i in row:
            want[i] += np.array([1.0, 2.0, 3.0]) / len(row)
    np.testing.assert_allclose(dense, want, rtol=1e-6)
    assert sorted(set(got.indices.numpy())) == [3, 7, 41]


def test_contrastive_accuracy_matches_numpy_argmax():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(40, 55)).astype(np.float32)
    labels = rng.integers(0, 55, 40)
    logits[np.arange(0, 40, 3), labels[::3]] += 10.0          # a third of the rows are hits
    want = np.mean(logits.argmax(axis=1) == labels)
    got = losses.contrastive_accuracy(tf.constant(logits), tf.constant(labels, tf.int32))
    assert float(got) == pytest.approx(want) and 0.3 < want < 0.5


def test_trainer_custom_config_round_trip(tiny_root):
    import json

    from components.trainer import component
    from tests.conftest import tiny_spec

    spec = tiny_spec(tiny_root)
    hp = hparams.from_dict({"variant": "cfm_balanced", "alpha": 0.3})
    config = json.loads(json.dumps(component.custom_config(spec, hp)))   # as TFX ships it
    assert component.read_custom_config(config) == (hp, spec)
    with pytest.raises(ValueError, match="has no 'dataset_spec'"):
        component.read_custom_config({"hparams": {}})


def test_trainer_decoder_equals_tft_beam_transform(tiny_root):
    """The Trainer's read-time transform gives what TFT's own Beam transform writes."""
    import os
    import tempfile

    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from tests.conftest import catalog_row, log_row, tiny_spec
    from transforms import preprocessing
    from transforms.schema import joined_schema

    spec = tiny_spec(tiny_root)
    rows = [catalog_row(b"a", [b"x", b"y"], [b"1990"]), catalog_row(b"b", [b"y"], []),
            catalog_row(b"c", [], [b"2000"]),
            log_row(b"a", b"b", [b"y", b"unseen"], [b"mobile"]),   # an OOV genre value
            log_row(b"zz", b"c", [], [])]                           # an unknown id, no values
    schema = joined_schema(spec)
    metadata = dataset_metadata.DatasetMetadata(schema)
    folder = tempfile.mkdtemp()
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        (expected, _), transform_fn = ((rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda x: preprocessing.preprocessing_fn(x, preprocessing.custom_config(spec))))
        _ = transform_fn | tft_beam.WriteTransformFn(folder)
    metadata_io.write_metadata(metadata,
                               os.path.join(folder, tft.TFTransformOutput.RAW_METADATA_DIR))
    coder = tft.coders.ExampleProtoCoder(schema)
    tft_out = tft.TFTransformOutput(folder)
    decoded = data.transformed_decoder(tft_out)(
        tf.constant([coder.encode(r) for r in rows]))
    assert features.ITEM_BUCKET not in decoded
    assert set(decoded) == set(expected[0]) - {features.ITEM_BUCKET}
    for key, value in decoded.items():
        got = value.to_list() if isinstance(value, tf.RaggedTensor) else value.numpy().tolist()
        assert [np.ravel(e[key]).tolist() for e in expected] == [np.ravel(g).tolist()
                                                                for g in got], key
    # The oracle itself: catalog genres {x, y} get ids 0 and 1, an unseen value the OOV id 2.
    assert tft_out.vocabulary_size_by_name(features.vocabulary_name("genre")) == 2
    assert sorted(np.ravel(expected[0]["item_genre"]).tolist()) == [0, 1]
    assert np.ravel(expected[3]["item_genre"]).tolist()[1] == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_diagonal_softmax_gradient_matches_numpy(seed):
    # [N, M] logits with M > N (extra negatives), two id lists masked: the
    # gradient of the mean loss is (softmax - onehot) / N, 0 where masked.
    rng = np.random.default_rng(seed)
    n, m = 6, 9
    raw = rng.normal(scale=3.0, size=(n, m))
    column_ids = rng.integers(0, 4, m)
    row_a, row_b = column_ids[:n], rng.integers(0, 4, n)
    logits = tf.Variable(raw)
    with tf.GradientTape() as tape:
        masked = losses._mask_same(logits, tf.constant(column_ids), tf.constant(row_a),
                                   tf.constant(row_b))
        loss = losses._diagonal_softmax_loss(masked)
    mask = (row_a[:, None] == column_ids[None, :]) | (row_b[:, None] == column_ids[None, :])
    mask[np.arange(n), np.arange(n)] = False
    assert mask.any() and not mask.all(axis=1).any()
    want_logits = np.where(mask, -1e9, raw)
    np.testing.assert_allclose(masked.numpy(), want_logits)
    assert loss.numpy() == pytest.approx(_np_softmax_ce(want_logits), rel=1e-9)
    p = np.exp(want_logits - want_logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(n), np.arange(n)] -= 1.0
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(), p / n, atol=1e-12)


def test_loss_gradients_equal_a_plain_softmax_cross_entropy():
    # The losses' hand-written backward pass against TensorFlow's own
    # softmax cross-entropy on explicitly masked logits (autodiff throughout).
    rng = np.random.default_rng(9)
    q, x, extra = (tf.Variable(rng.normal(size=s).astype(np.float32))
                   for s in ((8, 5), (8, 5), (3, 5)))
    ids = tf.constant([1, 2, 3, 1, 4, 5, 2, 6])
    query_ids, extra_ids = tf.constant([7, 1, 9, 9, 2, 8, 8, 3]), tf.constant([3, 9, 4])
    log_q = tf.constant(rng.normal(size=8).astype(np.float32))
    extra_log_q = tf.constant(rng.normal(size=3).astype(np.float32))

    def plain(logits, row_ids, column_ids):
        same = tf.reduce_any([tf.equal(r[:, None], column_ids[None, :]) for r in row_ids], 0)
        n, m = logits.shape
        masked = tf.where(same & ~tf.eye(n, m, dtype=tf.bool), -1e9, logits)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.range(n), masked))

    with tf.GradientTape(persistent=True) as tape:
        main, _, _ = losses.batch_softmax_loss(
            q, x, 0.1, item_ids=ids, log_q=log_q, query_ids=query_ids, extra_items=extra,
            extra_ids=extra_ids, extra_log_q=extra_log_q)
        raw = (losses.cosine_logits(q, tf.concat([x, extra], 0), 0.1)
               - tf.concat([log_q, extra_log_q], 0)[None, :])
        main_plain = plain(raw, [ids, query_ids], tf.concat([ids, extra_ids], 0))
        ssl, _, _ = losses.ssl_loss(q, x, 0.2, item_ids=ids)
        ssl_plain = plain(losses.cosine_logits(q, x, 0.2), [ids], ids)
    assert main.numpy() == pytest.approx(main_plain.numpy(), rel=1e-6)
    assert ssl.numpy() == pytest.approx(ssl_plain.numpy(), rel=1e-6)
    for got, want in ((main, main_plain), (ssl, ssl_plain)):
        for a, b in zip(tape.gradient(got, [q, x, extra]), tape.gradient(want, [q, x, extra])):
            if b is None:
                assert a is None
            else:
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_epoch_tensorboard_writes_the_graph_and_every_epoch_without_batch_hooks(tmp_path):
    import tf_keras

    from components.trainer.run import EpochTensorBoard

    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse")
    x = np.arange(40, dtype=np.float32).reshape(20, 2) / 40
    board = EpochTensorBoard(log_dir=str(tmp_path))
    assert not board._implements_train_batch_hooks()
    history = model.fit(x, x[:, :1], epochs=3, batch_size=5, verbose=0, callbacks=[board])
    losses, graphs = [], 0
    for path in sorted((tmp_path / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            graphs += bool(event.graph_def)
            losses += [(event.step, tf.make_ndarray(v.tensor).item())
                       for v in event.summary.value if v.tag == "epoch_loss"]
    assert graphs == 1
    assert [s for s, _ in losses] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in losses], history.history["loss"], rtol=1e-6)
