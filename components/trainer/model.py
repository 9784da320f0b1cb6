"""The two-tower model with the paper's SSL task and baselines.

A training batch is ``(main, ssl)``: ``main`` holds N (query, positive)
rows from the logs (``query_*``, ``context_*`` and ``item_*`` id features);
``ssl`` holds catalog items drawn uniformly (``item_*`` features and
``item_train_count``); it feeds the SSL loss and, for mixed negative
sampling, extra negatives. Keys are the transformed feature keys of
:mod:`transforms.features`. What a variant does is read from its row of
:data:`components.trainer.hparams.VARIANTS`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import tensorflow as tf
import tf_keras

from components.trainer import augment, losses
from components.trainer.hparams import HParams
from components.trainer.towers import FeatureEmbedding, Tower
from transforms import features


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """Which features feed which tower, and their vocabulary sizes.

    Attributes:
      item_names: item features in spec order (the id first).
      multivalued: the multi-valued item features (value dropout applies).
      query_item_names: item features of the query (seed) item.
      context_names: log context features (query tower only).
      vocab_sizes: ids per feature (vocabulary + OOV buckets), by name.
      id_name: the item id feature.
    """

    item_names: tuple[str, ...]
    multivalued: tuple[str, ...]
    query_item_names: tuple[str, ...]
    context_names: tuple[str, ...]
    vocab_sizes: Mapping[str, int]
    id_name: str

    @property
    def can_share_towers(self) -> bool:
        """True when the query is exactly an item (item-to-item, no context)."""
        return not self.context_names and self.query_item_names == self.item_names


def item_inputs(batch: Mapping[str, tf.RaggedTensor], layout: FeatureLayout
                ) -> dict[str, tf.RaggedTensor]:
    """``item_<f>`` columns of a batch, keyed by feature name."""
    return {n: batch[features.item_key(n)] for n in layout.item_names}


def query_inputs(batch: Mapping[str, tf.RaggedTensor], layout: FeatureLayout
                 ) -> dict[str, tf.RaggedTensor]:
    """``query_<f>`` and ``context_<f>`` columns, keyed by tower input name."""
    out = {n: batch[features.query_key(n)] for n in layout.query_item_names}
    out.update({features.context_key(n): batch[features.context_key(n)]
                for n in layout.context_names})
    return out


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Counts behind the logQ correction of mixed negative sampling.

    Attributes:
      train_pairs: ``T``, training pairs (the sum of the items' training counts).
      n_items: ``N``, catalog items (the uniform batch's support).
    """

    train_pairs: float
    n_items: float


def _first_id(ids: tf.RaggedTensor) -> tf.Tensor:
    """[N] the first id of each row (-1 when empty)."""
    return ids.to_tensor(default_value=-1)[:, 0]


def _replicas() -> int:
    """Replicas training in sync (1 outside a tf.distribute strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _gather(values: Sequence[Optional[tf.Tensor]]) -> list[Optional[tf.Tensor]]:
    """Every replica's rows of each tensor of ``values``, in replica order.

    One collective per tensor (a batched gather packs its tensors into one,
    which needs equal dtypes and ranks); Nones stay None. Gradients flow back
    to the replica that made the rows.
    """
    context = tf.distribute.get_replica_context()
    return [None if v is None else context.all_gather(v, axis=0) for v in values]


def _all_replicas(*values: Optional[tf.Tensor]) -> list[Optional[tf.Tensor]]:
    """``values``' rows of every replica (the values themselves with one replica)."""
    return list(values) if _replicas() == 1 else _gather(values)


def _other_replicas(*values: Optional[tf.Tensor]) -> list[Optional[tf.Tensor]]:
    """The other replicas' rows of each of ``values`` (every replica has as many rows)."""
    context = tf.distribute.get_replica_context()
    me = tf.cast(context.replica_id_in_sync_group, tf.int32)
    out = []
    for value, gathered in zip(values, _gather(values)):
        if value is not None:
            n = tf.shape(value)[0]
            gathered = tf.concat([gathered[:me * n], gathered[(me + 1) * n:]], axis=0)
        out.append(gathered)
    return out


def _tower_many(tower: Tower, parts: Sequence[tuple[Mapping[str, tf.RaggedTensor],
                                                     Optional[tf.Tensor]]]) -> list[tf.Tensor]:
    """``[tower(features, mask) for features, mask in parts]`` in one tower call."""
    if len(parts) == 1:
        return [tower(*parts[0])]
    names = list(parts[0][0])
    rows = [tf.shape(p[names[0]].row_lengths())[0] for p, _ in parts]
    joined = {n: tf.concat([p[n] for p, _ in parts], axis=0) for n in names}
    mask = None
    if any(m is not None for _, m in parts):
        k = len(tower.names)
        mask = tf.concat([tf.zeros([r, k], tf.bool) if m is None else m
                          for r, (_, m) in zip(rows, parts)], axis=0)
    return tf.split(tower(joined, mask), tf.stack(rows), axis=0, num=len(parts))


class TwoTowerSSL(tf_keras.Model):
    """Query and item towers; ``train_step`` computes L_main + alpha * L_self."""

    def __init__(self, layout: FeatureLayout, hparams: HParams,
                 cfm_groups: Optional[Mapping[str, Sequence[str]]] = None,
                 sampling: Optional[Sampling] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        flags = hparams.flags
        share = layout.can_share_towers if hparams.share_towers is None else hparams.share_towers
        if share and not layout.can_share_towers:
            raise ValueError("hparams.share_towers=true needs the query to be an item with the "
                             "same features and no context features; set share_towers: false.")
        if flags.masking == "cfm" and not cfm_groups:
            raise ValueError(f"variant {hparams.variant!r} needs the FeatureCorrelation "
                             "artefact's CFM groups; wire its output to the Trainer.")
        if flags.extra_negatives and hparams.logq_correction and sampling is None:
            raise ValueError(f"variant {hparams.variant!r} with logq_correction needs the "
                             "training-pair and catalog counts (Sampling).")
        self.layout, self.hparams, self.flags, self.sampling = layout, hparams, flags, sampling
        dim = hparams.embedding_dim
        names = list(layout.item_names) + [features.context_key(n) for n in layout.context_names]
        sizes = layout.vocab_sizes        # item features by name, context by context key
        self.feature_embeddings = {n: FeatureEmbedding(sizes[n], dim, name=f"embedding_{n}")
                                   for n in names}
        self.item_tower = Tower(layout.item_names, self.feature_embeddings,
                                hparams.hidden_units, hparams.activation, name="item_tower")
        if share:
            self.query_tower = self.item_tower
        else:
            query_names = list(layout.query_item_names) + [
                features.context_key(n) for n in layout.context_names]
            self.query_tower = Tower(query_names, self.feature_embeddings, hparams.hidden_units,
                                     hparams.activation, name="query_tower")
        self.shared = share
        self.cfm = (augment.cfm_table(cfm_groups, layout.item_names)
                    if flags.masking == "cfm" else None)
        names = ["loss", "main_loss", "main_accuracy"]
        if hparams.uses_ssl:
            names += ["ssl_loss", "ssl_accuracy"]
        self.trackers = {name: tf_keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self) -> list[tf_keras.metrics.Metric]:
        """Trackers reset at each epoch."""
        return list(self.trackers.values())

    def query_embedding(self, batch: Mapping[str, tf.RaggedTensor]) -> tf.Tensor:
        """[N, D] query embeddings from transformed ``query_*``/``context_*`` features."""
        return self.query_tower(query_inputs(batch, self.layout))

    def item_embedding(self, batch: Mapping[str, tf.RaggedTensor],
                       mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """[N, D] item embeddings from transformed ``item_*`` features."""
        return self.item_tower(item_inputs(batch, self.layout), mask)

    def call(self, batch: Mapping[str, tf.RaggedTensor]) -> dict[str, tf.Tensor]:
        """Both embeddings of a main batch (for saving and inspection)."""
        return {"query": self.query_embedding(batch), "item": self.item_embedding(batch)}

    def _ssl_views(self, items: dict[str, tf.RaggedTensor], step: tf.Tensor
                   ) -> list[tuple[dict[str, tf.RaggedTensor], Optional[tf.Tensor]]]:
        """The two augmented views ``[(features h, mask h), (features g, mask g)]``."""
        hp, layout, flags = self.hparams, self.layout, self.flags
        n = tf.shape(items[layout.id_name].row_lengths())[0]
        k = len(layout.item_names)
        n_masked = hp.masked_count(k)
        seed_h, seed_g = augment.step_seed(hp.seed, step, 1), augment.step_seed(hp.seed, step, 2)
        mask_h = mask_g = None
        if flags.masking == "cfm":
            mask_h, mask_g, _ = augment.cfm_masks(self.cfm, n, augment.step_seed(hp.seed, step, 3))
        elif flags.masking == "rfm":
            mask_h, mask_g = augment.rfm_masks(n, k, n_masked, seed_h)
        elif flags.masking == "independent":
            mask_h, mask_g = augment.independent_masks(n, k, n_masked, seed_h, seed_g)
        view_h, view_g = items, items
        if flags.value_dropout:
            view_h = augment.drop_values(items, layout.multivalued, hp.dropout_rate, seed_h)
            view_g = augment.drop_values(items, layout.multivalued, hp.dropout_rate, seed_g)
        return [(view_h, mask_h), (view_g, mask_g)]

    def _log_q(self, counts: tf.Tensor) -> tf.Tensor:
        """Log sampling probability of candidates with these training counts.

        In-batch positives are drawn by training frequency: ``log c`` (up to a
        constant). With extra uniform negatives an item can enter the softmax
        either way, so ``log(B c / T + B' / N)`` (``T`` training pairs, ``N``
        catalog items).
        """
        counts = tf.cast(tf.reshape(counts, [-1]), tf.float32)
        if not self.flags.extra_negatives:
            return tf.math.log(tf.maximum(counts, 1.0))
        hp, sampling = self.hparams, self.sampling
        return tf.math.log(hp.batch_size * counts / sampling.train_pairs
                           + hp.ssl_batch_size / sampling.n_items)

    def _step_embeddings(self, main: Mapping[str, tf.RaggedTensor],
                         ssl: Mapping[str, tf.RaggedTensor], step: tf.Tensor
                         ) -> dict[str, tf.Tensor]:
        """Every embedding of one step, by name.

        ``query`` and ``item``, and by variant ``extra`` (uniform negatives)
        and ``view_h`` / ``view_g`` (SSL views). The item-tower inputs (and,
        with shared towers, the queries too) go through the tower as ONE
        concatenated batch: the same numbers as a call per part (the tower
        is row-wise), with fewer ops.
        """
        hp, layout = self.hparams, self.layout
        mask = None
        if self.flags.feature_dropout:
            n = tf.shape(main[features.item_key(layout.id_name)].row_lengths())[0]
            mask = augment.bernoulli_masks(n, len(layout.item_names), hp.feature_dropout_rate,
                                           augment.step_seed(hp.seed, step, 4))
        names = ["item"]
        parts = [(item_inputs(main, layout), mask)]
        if self.flags.extra_negatives:
            names.append("extra")
            parts.append((item_inputs(ssl, layout), None))
        identical_views = self.flags.ssl_views == 1
        if self.flags.ssl_loss:
            views = self._ssl_views(item_inputs(ssl, layout), step)
            names += ["view_h"] if identical_views else ["view_h", "view_g"]
            parts += views[:1] if identical_views else views
        query = (query_inputs(main, layout), None)
        if self.shared:
            out = dict(zip(["query", *names], _tower_many(self.item_tower, [query, *parts])))
        else:
            out = dict(zip(names, _tower_many(self.item_tower, parts)))
            out["query"] = self.query_tower(*query)
        if self.flags.ssl_loss and identical_views:
            out["view_g"] = out["view_h"]               # SO: both views are the item itself
        return out

    def _main_loss(self, main: Mapping[str, tf.RaggedTensor], ssl: Mapping[str, tf.RaggedTensor],
                   emb: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The main loss over the global batch's candidates.

        Over several replicas (multi-worker training) each replica's queries
        also score the other replicas' positives and extra negatives, so the
        softmax is over the same candidates as one process's global batch.
        """
        hp, layout = self.hparams, self.layout
        ids = _first_id(main[features.item_key(layout.id_name)])
        query_ids = _first_id(main[features.query_key(layout.id_name)]) if self.shared else None
        log_q = self._log_q(main[features.ITEM_TRAIN_COUNT]) if hp.logq_correction else None
        # Candidate blocks beside the in-batch positives: (embeddings, ids, log Q).
        blocks = []
        if _replicas() > 1:
            blocks.append(_other_replicas(emb["item"], ids, log_q))
        if self.flags.extra_negatives:
            extra_log_q = (self._log_q(ssl[features.ITEM_TRAIN_COUNT]) if hp.logq_correction
                           else None)
            blocks.append(_all_replicas(
                emb["extra"], _first_id(ssl[features.item_key(layout.id_name)]), extra_log_q))
        extra = {}
        if blocks:
            extra = {"extra_items": tf.concat([b[0] for b in blocks], 0),
                     "extra_ids": tf.concat([b[1] for b in blocks], 0)}
            if log_q is not None:
                extra["extra_log_q"] = tf.concat([b[2] for b in blocks], 0)
        return losses.batch_softmax_loss(
            emb["query"], emb["item"], hp.temperature, item_ids=ids, log_q=log_q,
            query_ids=query_ids, remove_accidental_hits=hp.remove_accidental_hits, **extra)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data: tuple[dict, dict]) -> dict[str, tf.Tensor]:
        """One step of L = L_main + alpha * L_self.

        Traced without AutoGraph (no tensor-dependent Python control flow
        here): converting the step's code took most of a small run's time.
        """
        main, ssl = data
        # Augmentation seeds: one per (step, replica), so replicas of a
        # multi-worker run mask differently; a single replica uses the step.
        replicas = _replicas()
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        step = (tf.cast(self.optimizer.iterations, tf.int64) * replicas
                + tf.cast(replica, tf.int64))
        with tf.GradientTape() as tape:
            emb = self._step_embeddings(main, ssl, step)
            main_loss, logits, labels = self._main_loss(main, ssl, emb)
            total = main_loss
            if self.flags.ssl_loss:
                z, z_prime = emb["view_h"], emb["view_g"]
                ssl_ids = _first_id(ssl[features.item_key(self.layout.id_name)])
                others = {}
                if replicas > 1:     # the global batch's second views are the negatives
                    views, view_ids = _other_replicas(z_prime, ssl_ids)
                    others = {"extra_views": views, "extra_ids": view_ids}
                ssl_loss, ssl_logits, ssl_labels = losses.ssl_loss(
                    z, z_prime, self.hparams.tau_ssl, item_ids=ssl_ids, **others)
                total = main_loss + self.hparams.alpha * ssl_loss
                self.trackers["ssl_loss"].update_state(ssl_loss)
                self.trackers["ssl_accuracy"].update_state(
                    losses.contrastive_accuracy(ssl_logits, ssl_labels))
            # Gradients are summed over replicas: each replica's mean loss is
            # scaled so the sum is the gradient of the global batch's mean.
            scaled = total / replicas
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.trackers["loss"].update_state(total)
        self.trackers["main_loss"].update_state(main_loss)
        self.trackers["main_accuracy"].update_state(losses.contrastive_accuracy(logits, labels))
        return {name: t.result() for name, t in self.trackers.items()}
