"""The cost of the Trainer's sparse embedding update against the table's size.

One step as the Trainer's towers take it (``components/trainer/towers.py``):
a fused gather-and-average (``tf.sparse.segment_mean`` with a sparse
gradient) over ``--ids`` ids, then Adagrad's sparse update (accumulator
scatter-add, gather, table scatter-add), on tables of ``--small`` and
``--large`` rows of the Trainer's default embedding width. The ids per step are the same count at
both sizes, drawn uniformly, so any difference is the memory the rows
live in. Sizes alternate over ``--rounds`` in one process, one TF thread.

Run from the repository root: ``python benchmarks/embedding_access.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from components.trainer import hparams as hparams_lib  # noqa: E402

NAME = "embedding_access"
#: Floats a row: the Trainer's default ``embedding_dim``.
DIM = hparams_lib.HParams().embedding_dim


def step_ms(rows: int, ids: int, steps: int, seed: int) -> float:
    """Mean milliseconds of one gather-average and sparse Adagrad update."""
    rng = np.random.default_rng(seed)
    table = tf.Variable(tf.random.normal([rows, DIM], seed=seed))
    accumulator = tf.Variable(tf.fill([rows, DIM], 0.1))
    segments = tf.constant(np.repeat(np.arange(ids // 2), 2))
    batches = [tf.constant(rng.integers(0, rows, ids)) for _ in range(50)]

    @tf.function(autograph=False)
    def step(batch: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            pooled = tf.sparse.segment_mean(table, batch, segments, num_segments=ids // 2,
                                            sparse_gradient=True)
            loss = tf.reduce_sum(pooled * pooled)
        grad = tape.gradient(loss, table)
        accumulator.scatter_add(tf.IndexedSlices(grad.values * grad.values, grad.indices))
        scale = tf.sqrt(tf.gather(accumulator, grad.indices) + 1e-7)
        table.scatter_add(tf.IndexedSlices(-0.05 * grad.values / scale, grad.indices))

    for batch in batches[:5]:
        step(batch)
    start = time.perf_counter()
    for k in range(steps):
        step(batches[k % len(batches)])
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    """Alternates the sizes, writes results/embedding_access.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    load = os.getloadavg()[0]
    times: dict[int, list[float]] = {args.small: [], args.large: []}
    for r in range(args.rounds):
        for rows in times:
            times[rows].append(step_ms(rows, args.ids, args.steps, seed=r))
    small, large = (float(np.mean(times[n])) for n in (args.small, args.large))
    values = {"ids_per_step": args.ids, "dim": DIM, "rounds": args.rounds,
              "small_rows": args.small, "large_rows": args.large,
              "small_step_ms": round(small, 2), "large_step_ms": round(large, 2),
              "step_ms_ratio_large_vs_small": round(large / small, 2),
              "large_table_mib": round(args.large * DIM * 4 / 2**20),
              "load_average_1m_at_start": round(load, 2)}

    def markdown(v: dict) -> str:
        return "\n".join([
            "# Sparse embedding update against the table's size", "",
            f"Command: `{v['command']}`; {v['machine_cpus']} CPUs (load "
            f"{v['load_average_1m_at_start']} at the start), one TF thread. One step: "
            f"gather-average of {v['ids_per_step']:,} uniform ids and Adagrad's sparse update, "
            f"{v['dim']} floats a row, mean of {v['rounds']} alternating rounds.", "",
            "| rows | ms per step |", "|---|---|",
            f"| {v['small_rows']:,} | {v['small_step_ms']} |",
            f"| {v['large_rows']:,} ({v['large_table_mib']} MiB) | {v['large_step_ms']} |", "",
            f"The same work costs {v['step_ms_ratio_large_vs_small']}x at the large size. The "
            "small table fits in the CPU's caches; rows of the large one are mostly memory "
            "(and page-table) misses.", ""])

    write_results(NAME, values, markdown)


if __name__ == "__main__":
    main()
