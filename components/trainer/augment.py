"""Augmentations for the SSL task as pure functions with explicit seeds.

Features travel as ``{name: tf.RaggedTensor [N, None] int64 ids}``; a mask is
a bool tensor [N, k] over the k item features in spec order (True = this
feature is replaced by its default embedding). Every random draw is a
stateless op taking a ``seed`` of shape [2], so a (seed, step) pair fixes
the result.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf


def step_seed(seed: int, step: tf.Tensor, stream: int) -> tf.Tensor:
    """The [2] int64 seed of random stream ``stream`` at training ``step``."""
    step = tf.cast(step, tf.int64)
    return tf.stack([tf.constant(seed, tf.int64) * 1000 + stream, step])


def cfm_table(groups: Mapping[str, Sequence[str]], names: Sequence[str]) -> tf.Tensor:
    """[k, k] bool: row s masks the features of seed ``names[s]``'s group."""
    rows = [[name in groups[seed] for name in names] for seed in names]
    return tf.constant(rows, dtype=tf.bool)


def cfm_masks(table: tf.Tensor, batch_size: tf.Tensor, seed: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Correlated feature masking: ONE seed feature per batch.

    Returns:
      ``(mask_h, mask_g, seed_index)``: [N, k] masks of views h (the seed's
      group) and g (its complement), and the scalar seed feature index.
    """
    k = tf.shape(table)[0]
    index = tf.random.stateless_uniform([], seed, minval=0, maxval=k, dtype=tf.int32)
    row = tf.gather(table, index)
    mask_h = tf.tile(row[tf.newaxis, :], [batch_size, 1])
    return mask_h, tf.logical_not(mask_h), index


def random_masks(batch_size: tf.Tensor, k: int, n_masked: int, seed: tf.Tensor) -> tf.Tensor:
    """[N, k]: each row masks a uniformly random subset of exactly ``n_masked`` features."""
    noise = tf.random.stateless_uniform([batch_size, k], seed)
    ranks = tf.argsort(tf.argsort(noise, axis=1), axis=1)
    return ranks < n_masked


def rfm_masks(batch_size: tf.Tensor, k: int, n_masked: int, seed: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor]:
    """Random feature masking: a random split per example; view g masks the complement."""
    mask_h = random_masks(batch_size, k, n_masked, seed)
    return mask_h, tf.logical_not(mask_h)


def independent_masks(batch_size: tf.Tensor, k: int, n_masked: int, seed_h: tf.Tensor,
                      seed_g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Ablation: two independent random masks of ``n_masked`` features each."""
    return (random_masks(batch_size, k, n_masked, seed_h),
            random_masks(batch_size, k, n_masked, seed_g))


def bernoulli_masks(batch_size: tf.Tensor, k: int, rate: float, seed: tf.Tensor) -> tf.Tensor:
    """[N, k]: each feature of each example masked with probability ``rate`` (FD baseline)."""
    return tf.random.stateless_uniform([batch_size, k], seed) < rate


def value_dropout(ids: tf.RaggedTensor, rate: float, seed: tf.Tensor) -> tf.RaggedTensor:
    """Drops each value of a multi-valued feature independently with probability ``rate``.

    A row whose values are all dropped becomes empty (its default embedding
    is used downstream).
    """
    if rate <= 0:
        return ids
    keep = tf.random.stateless_uniform(tf.shape(ids.flat_values), seed) >= rate
    return tf.ragged.boolean_mask(ids, ids.with_flat_values(keep))


def drop_values(features: Mapping[str, tf.RaggedTensor], multivalued: Sequence[str],
                rate: float, seed: tf.Tensor) -> dict[str, tf.RaggedTensor]:
    """Applies :func:`value_dropout` to the multi-valued features only."""
    out = dict(features)
    for i, name in enumerate(multivalued):
        out[name] = value_dropout(features[name], rate,
                                  seed + tf.constant([0, 7919], tf.int64) * (i + 1))
    return out
