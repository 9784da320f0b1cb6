"""The dense work of one training step, counted from the layout and hyper-parameters.

A step's matrix products are the towers' MLP layers over every row they
embed and the two softmaxes' logits; they are most of a step's op time, the
input pipeline aside (a profile of MovieLens-1M's ``cfm`` step: 58% in
matrix products; a 17-feature catalog's ``mns`` step: 67%). The counts are
forward multiply-adds; the backward pass costs about twice as much again,
for every variant alike, so ratios of these counts are ratios of the dense
work.

Rows per step: the query tower embeds the batch's queries; the item tower
embeds the positives, the uniform catalog batch when it is extra negatives
(``mns``), and each SSL view of that batch (two, or one when both views are
the item itself: ``so``). With shared towers the queries go through the item
tower: the same count.
"""

from __future__ import annotations

from typing import Sequence

from components.trainer.hparams import HParams
from components.trainer.model import FeatureLayout


def mlp_macs(inputs: int, hparams: HParams) -> int:
    """Multiply-adds per row of a tower over ``inputs`` features (each ``embedding_dim`` wide)."""
    widths: Sequence[int] = (inputs * hparams.embedding_dim, *hparams.hidden_units)
    return sum(a * b for a, b in zip(widths, widths[1:]))


def step_macs(layout: FeatureLayout, hparams: HParams) -> int:
    """Forward multiply-adds of one step's tower layers and logits (one process)."""
    flags, batch, ssl_batch = hparams.flags, hparams.batch_size, hparams.ssl_batch_size
    dim = hparams.hidden_units[-1]
    extra = ssl_batch if flags.extra_negatives else 0
    item_rows = batch + extra + flags.ssl_views * ssl_batch
    query_inputs = len(layout.query_item_names) + len(layout.context_names)
    macs = (batch * mlp_macs(query_inputs, hparams)
            + item_rows * mlp_macs(len(layout.item_names), hparams))
    macs += batch * (batch + extra) * dim                  # main logits
    if flags.ssl_loss:
        macs += ssl_batch * ssl_batch * dim                # SSL logits
    return macs
