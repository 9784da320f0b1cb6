"""Contrastive losses as pure functions (returning loss, logits and labels).

Shapes: ``N`` = batch size, ``D`` = embedding width.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

_MASKED = -1e9


def cosine_logits(a: tf.Tensor, b: tf.Tensor, temperature: float) -> tf.Tensor:
    """``cos(a_i, b_j) / temperature`` for every pair: [N, D] x [M, D] -> [N, M]."""
    a = tf.math.l2_normalize(a, axis=-1)
    b = tf.math.l2_normalize(b, axis=-1)
    return tf.matmul(a, b, transpose_b=True) / temperature


def batch_softmax_loss(
    query: tf.Tensor,
    item: tf.Tensor,
    temperature: float,
    item_ids: Optional[tf.Tensor] = None,
    log_q: Optional[tf.Tensor] = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The main loss: in-batch softmax over N (query, positive item) pairs.

    ``L = -1/N sum_i log softmax_j(s(q_i, x_j) / tau)[i]`` with cosine ``s``.

    Args:
      query: [N, D] query-tower embeddings.
      item: [N, D] item-tower embeddings of the positives; row j is the
        negative of every other row.
      temperature: tau.
      item_ids: [N] ids of the positives; if given, negatives ``j != i`` with
        ``item_ids[j] == item_ids[i]`` (accidental hits) are masked out.
      log_q: [N] log sampling probability of each positive item; if given,
        subtracted from column j's logits (logQ correction).

    Returns:
      ``(loss, logits, labels)``: scalar mean loss, [N, N] logits after
      masking/correction, [N] labels (the diagonal).
    """
    logits = cosine_logits(query, item, temperature)
    if log_q is not None:
        logits = logits - tf.cast(log_q, logits.dtype)[tf.newaxis, :]
    n = tf.shape(logits)[0]
    labels = tf.range(n)
    if item_ids is not None:
        same = tf.equal(item_ids[:, tf.newaxis], item_ids[tf.newaxis, :])
        hits = tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool)))
        logits = tf.where(hits, tf.cast(_MASKED, logits.dtype), logits)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(loss), logits, labels


def ssl_loss(z: tf.Tensor, z_prime: tf.Tensor, temperature: float
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The self-supervised loss between two views of N items (one direction).

    ``L = -1/N sum_i log( exp(s(z_i, z'_i)/tau) / sum_j exp(s(z_i, z'_j)/tau) )``:
    each item's first view must pick its own second view among the N second
    views (N - 1 negatives: the other items' second views).

    Args:
      z: [N, D] item-tower outputs of view h.
      z_prime: [N, D] item-tower outputs of view g.
      temperature: tau.

    Returns:
      ``(loss, logits, labels)`` with logits [N, N] and labels [N].
    """
    logits = cosine_logits(z, z_prime, temperature)
    labels = tf.range(tf.shape(logits)[0])
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(loss), logits, labels


def contrastive_accuracy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Share of rows whose largest logit is on the label."""
    predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))
