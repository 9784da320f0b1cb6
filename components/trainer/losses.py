"""Contrastive losses as pure functions (returning loss, logits and labels).

Shapes: ``N`` = batch size, ``D`` = embedding width.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

_MASKED = -1e9


def cosine_logits(a: tf.Tensor, b: tf.Tensor, temperature: float) -> tf.Tensor:
    """``cos(a_i, b_j) / temperature`` for every pair: [N, D] x [M, D] -> [N, M].

    The temperature scales the [N, D] side, not the [N, M] product.
    """
    a = tf.math.l2_normalize(a, axis=-1) / temperature
    b = tf.math.l2_normalize(b, axis=-1)
    return tf.matmul(a, b, transpose_b=True)


@tf.custom_gradient
def _fill_masked(logits: tf.Tensor, masked: tf.Tensor) -> tuple[tf.Tensor, Callable]:
    """``where(masked, -1e9, logits)`` [N, M] whose gradient passes through unchanged.

    Only for logits feeding :func:`_diagonal_softmax_loss`: a masked logit's
    softmax weight ``exp(-1e9 - max)`` is exactly 0, so the gradient that
    reaches it is already 0 and a select in the backward pass (plus a
    zeros tensor) would only copy [N, M] numbers.
    """
    def grad(upstream: tf.Tensor) -> tuple[tf.Tensor, None]:
        return upstream, None

    return tf.where(masked, tf.cast(_MASKED, logits.dtype), logits), grad


def _mask_same(logits: tf.Tensor, column_ids: tf.Tensor, *row_ids: tf.Tensor) -> tf.Tensor:
    """Masks (i, j), ``j != i``, where ``column_ids[j]`` equals any ``row_ids[i]``.

    [N, M] -> [N, M], one select for every id list (the diagonal cleared in
    the boolean mask, not by a second [N, M] mask).
    """
    same = None
    for ids in row_ids:
        hit = tf.equal(tf.cast(ids, column_ids.dtype)[:, tf.newaxis], column_ids[tf.newaxis, :])
        same = hit if same is None else tf.logical_or(same, hit)
    diagonal = tf.zeros_like(tf.linalg.diag_part(same))
    return _fill_masked(logits, tf.linalg.set_diag(same, diagonal))


@tf.custom_gradient
def _diagonal_softmax_loss(logits: tf.Tensor) -> tuple[tf.Tensor, Callable]:
    """Mean softmax cross-entropy of [N, M] logits (M >= N) whose label is the diagonal.

    ``logsumexp_j(l_ij) - l_ii``, the numbers of
    ``sparse_softmax_cross_entropy_with_logits(labels=range(N))``; the
    gradient ``(softmax - onehot) / N`` is formed from the forward pass's
    exponentials in two passes over the matrix (a scale, then the
    diagonal) instead of autodiff's four.
    """
    row_max = tf.reduce_max(logits, axis=1, keepdims=True)
    exp = tf.exp(logits - row_max)
    total = tf.reduce_sum(exp, axis=1, keepdims=True)
    loss = tf.reduce_mean(tf.math.log(total[:, 0]) + row_max[:, 0]
                          - tf.linalg.diag_part(logits))

    def grad(upstream: tf.Tensor) -> tf.Tensor:
        scale = upstream / tf.cast(tf.shape(logits)[0], logits.dtype)
        d = exp * (scale / total)
        return tf.linalg.set_diag(d, tf.linalg.diag_part(d) - scale)

    return loss, grad


def batch_softmax_loss(
    query: tf.Tensor,
    item: tf.Tensor,
    temperature: float,
    item_ids: Optional[tf.Tensor] = None,
    log_q: Optional[tf.Tensor] = None,
    query_ids: Optional[tf.Tensor] = None,
    extra_items: Optional[tf.Tensor] = None,
    extra_ids: Optional[tf.Tensor] = None,
    extra_log_q: Optional[tf.Tensor] = None,
    remove_accidental_hits: bool = True,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The main loss: softmax over the in-batch positives (and extra negatives).

    ``L = -1/N sum_i log softmax_j(s(q_i, x_j) / tau - log Q_j)[i]`` with cosine
    ``s`` over the ``N + M`` candidates ``x = [item; extra_items]``.

    Args:
      query: [N, D] query-tower embeddings.
      item: [N, D] item-tower embeddings of the positives; row j is the
        negative of every other row.
      temperature: tau.
      item_ids: [N] ids of the positives; if given, candidates ``j != i`` with
        the id of row i's positive (accidental hits) are masked out (unless
        ``remove_accidental_hits`` is False).
      log_q: [N] log sampling probability of each positive item; if given,
        subtracted from column j's logits (logQ correction).
      query_ids: [N] item ids of the queries (item-to-item); if given,
        candidates ``j != i`` that are row i's query item are masked out (with
        shared towers their cosine with the query is 1 by construction).
      extra_items: [M, D] extra negatives (e.g. a uniform catalog batch).
      extra_ids: [M] their ids (for the two masks above).
      extra_log_q: [M] their log sampling probabilities (with ``log_q``).
      remove_accidental_hits: mask accidental hits (needs ``item_ids``).

    Returns:
      ``(loss, logits, labels)``: scalar mean loss, [N, N + M] logits after
      masking/correction, [N] labels (the diagonal).
    """
    if query_ids is not None and item_ids is None:
        raise ValueError("query_ids masks candidates by id: pass item_ids too.")
    candidates, candidate_ids, candidate_log_q = item, item_ids, log_q
    if extra_items is not None:
        if item_ids is not None and extra_ids is None:
            raise ValueError("extra_items with item_ids need extra_ids (the same masks apply).")
        if log_q is not None and extra_log_q is None:
            raise ValueError("extra_items with log_q need extra_log_q (every column corrected).")
        candidates = tf.concat([item, extra_items], axis=0)
        if item_ids is not None:
            candidate_ids = tf.concat([item_ids, tf.cast(extra_ids, item_ids.dtype)], axis=0)
        if log_q is not None:
            candidate_log_q = tf.concat([log_q, tf.cast(extra_log_q, log_q.dtype)], axis=0)
    logits = cosine_logits(query, candidates, temperature)
    if candidate_log_q is not None:
        logits = logits - tf.cast(candidate_log_q, logits.dtype)[tf.newaxis, :]
    labels = tf.range(tf.shape(logits)[0])
    row_ids = [ids for ids, use in ((item_ids, remove_accidental_hits), (query_ids, True))
               if ids is not None and use]
    if row_ids:
        logits = _mask_same(logits, candidate_ids, *row_ids)
    return _diagonal_softmax_loss(logits), logits, labels


def ssl_loss(z: tf.Tensor, z_prime: tf.Tensor, temperature: float,
             item_ids: Optional[tf.Tensor] = None, extra_views: Optional[tf.Tensor] = None,
             extra_ids: Optional[tf.Tensor] = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The self-supervised loss between two views of N items (one direction).

    ``L = -1/N sum_i log( exp(s(z_i, z'_i)/tau) / sum_j exp(s(z_i, z'_j)/tau) )``:
    each item's first view must pick its own second view among the N second
    views (N - 1 negatives: the other items' second views).

    Args:
      z: [N, D] item-tower outputs of view h.
      z_prime: [N, D] item-tower outputs of view g.
      temperature: tau.
      item_ids: [N] ids of the items; if given, a second view ``j != i`` of
        the same item (a repeated uniform draw) is masked out: it is not a
        negative.
      extra_views: [M, D] more second views, negatives of every row (the
        other training workers' items: the batch is then the global one).
      extra_ids: [M] their ids (needed with ``item_ids``).

    Returns:
      ``(loss, logits, labels)`` with logits [N, N + M] and labels [N].
    """
    candidates, candidate_ids = z_prime, item_ids
    if extra_views is not None:
        if item_ids is not None and extra_ids is None:
            raise ValueError("extra_views with item_ids need extra_ids (the same mask applies).")
        candidates = tf.concat([z_prime, extra_views], axis=0)
        if item_ids is not None:
            candidate_ids = tf.concat([item_ids, tf.cast(extra_ids, item_ids.dtype)], axis=0)
    logits = cosine_logits(z, candidates, temperature)
    if item_ids is not None:
        logits = _mask_same(logits, candidate_ids, item_ids)
    return _diagonal_softmax_loss(logits), logits, tf.range(tf.shape(logits)[0])


def contrastive_accuracy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Share of rows whose largest logit is on the label (a tie counts as a hit)."""
    on_label = tf.gather(logits, labels, axis=1, batch_dims=1)
    return tf.reduce_mean(tf.cast(on_label >= tf.reduce_max(logits, axis=-1), tf.float32))
