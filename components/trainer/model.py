"""The two-tower model with the paper's SSL task and baselines.

A training batch is ``(main, ssl)``: ``main`` holds N (query, positive)
rows from the logs (``query_*``, ``context_*`` and ``item_*`` id features);
``ssl`` holds N catalog items drawn uniformly (``item_*`` features). Keys
are the transformed feature keys of :mod:`transforms.features`.
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


class TwoTowerSSL(tf_keras.Model):
    """Query and item towers; ``train_step`` computes L_main + alpha * L_self."""

    def __init__(self, layout: FeatureLayout, hparams: HParams,
                 cfm_groups: Optional[Mapping[str, Sequence[str]]] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        share = layout.can_share_towers if hparams.share_towers is None else hparams.share_towers
        if share and not layout.can_share_towers:
            raise ValueError("hparams.share_towers=true needs the query to be an item with the "
                             "same features and no context features; set share_towers: false.")
        if hparams.variant.startswith("cfm") and not cfm_groups:
            raise ValueError(f"variant {hparams.variant!r} needs the FeatureCorrelation "
                             "artefact's CFM groups; wire its output to the Trainer.")
        self.layout, self.hparams = layout, hparams
        dim = hparams.embedding_dim
        names = list(layout.item_names) + [features.context_key(n) for n in layout.context_names]
        sizes = dict(layout.vocab_sizes)
        sizes.update({features.context_key(n): layout.vocab_sizes[features.context_key(n)]
                      for n in layout.context_names})
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
        self.cfm = (augment.cfm_table(cfm_groups, layout.item_names)
                    if hparams.variant.startswith("cfm") else None)
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
                   ) -> tuple[tf.Tensor, tf.Tensor]:
        hp, layout = self.hparams, self.layout
        n = tf.shape(items[layout.id_name].row_lengths())[0]
        k = len(layout.item_names)
        n_masked = hp.n_masked or 1 + k // 2
        seed_h, seed_g = augment.step_seed(hp.seed, step, 1), augment.step_seed(hp.seed, step, 2)
        mask_h = mask_g = None
        if hp.variant.startswith("cfm"):
            mask_h, mask_g, _ = augment.cfm_masks(self.cfm, n, augment.step_seed(hp.seed, step, 3))
        elif hp.variant == "rfm":
            mask_h, mask_g = augment.rfm_masks(n, k, n_masked, seed_h)
        elif hp.variant == "independent_masks":
            mask_h, mask_g = augment.independent_masks(n, k, n_masked, seed_h, seed_g)
        view_h, view_g = items, items
        if hp.variant in ("rfm", "cfm", "independent_masks", "dropout_only"):
            view_h = augment.drop_values(items, layout.multivalued, hp.dropout_rate, seed_h)
            view_g = augment.drop_values(items, layout.multivalued, hp.dropout_rate, seed_g)
        return self.item_tower(view_h, mask_h), self.item_tower(view_g, mask_g)

    def _main_loss(self, main: Mapping[str, tf.RaggedTensor], step: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        hp, layout = self.hparams, self.layout
        mask = None
        if hp.variant == "fd":
            n = tf.shape(main[features.item_key(layout.id_name)].row_lengths())[0]
            mask = augment.bernoulli_masks(n, len(layout.item_names), hp.feature_dropout_rate,
                                           augment.step_seed(hp.seed, step, 4))
        query = self.query_embedding(main)
        item = self.item_embedding(main, mask)
        ids = main[features.item_key(layout.id_name)].to_tensor(default_value=-1)[:, 0]
        log_q = None
        if hp.logq_correction:
            counts = tf.reshape(main[features.ITEM_TRAIN_COUNT], [-1])
            log_q = tf.math.log(tf.maximum(tf.cast(counts, tf.float32), 1.0))
        return losses.batch_softmax_loss(
            query, item, hp.temperature,
            item_ids=ids if hp.remove_accidental_hits else None, log_q=log_q)

    def train_step(self, data: tuple[dict, dict]) -> dict[str, tf.Tensor]:
        """One step of L = L_main + alpha * L_self."""
        main, ssl = data
        step = self.optimizer.iterations
        with tf.GradientTape() as tape:
            main_loss, logits, labels = self._main_loss(main, step)
            total = main_loss
            if self.hparams.uses_ssl:
                z, z_prime = self._ssl_views(item_inputs(ssl, self.layout), step)
                ssl_loss, ssl_logits, ssl_labels = losses.ssl_loss(z, z_prime,
                                                                   self.hparams.tau_ssl)
                total = main_loss + self.hparams.alpha * ssl_loss
                self.trackers["ssl_loss"].update_state(ssl_loss)
                self.trackers["ssl_accuracy"].update_state(
                    losses.contrastive_accuracy(ssl_logits, ssl_labels))
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.trackers["loss"].update_state(total)
        self.trackers["main_loss"].update_state(main_loss)
        self.trackers["main_accuracy"].update_state(losses.contrastive_accuracy(logits, labels))
        return {name: t.result() for name, t in self.trackers.items()}
