"""The cost of the Trainer's sparse embedding update against the table's size.

One step as the Trainer's towers take it (``components/trainer/towers.py``):
an average over ``--ids`` ids, then Adagrad's sparse update (accumulator
scatter-add, gather, table scatter-add), on tables of ``--small`` and
``--large`` rows of the Trainer's default embedding width. The average is
taken two ways: ``gather`` (what the towers do: gather the distinct rows,
then average them) and ``dense`` (the towers' former lookup: a fused
``tf.sparse.segment_mean`` over the whole table variable). Once a variable
has had a sparse update, TensorFlow copies it whole on every dense read, so
``dense`` costs a copy of the table per step. The ids per step are the same
count at both sizes, drawn uniformly. Sizes and lookups alternate over
``--rounds`` in one process, one TF thread.

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
LOOKUPS = ("gather", "dense")


def _average(table: tf.Variable, batch: tf.Tensor, segments: tf.Tensor, n: int,
             lookup: str) -> tf.Tensor:
    if lookup == "dense":
        return tf.sparse.segment_mean(table, batch, segments, num_segments=n,
                                      sparse_gradient=True)
    unique, index = tf.unique(batch)
    return tf.sparse.segment_mean(tf.gather(table, unique), index, segments, num_segments=n)


def step_ms(rows: int, ids: int, steps: int, seed: int, lookup: str) -> float:
    """Mean milliseconds of one average and sparse Adagrad update."""
    rng = np.random.default_rng(seed)
    table = tf.Variable(tf.random.normal([rows, DIM], seed=seed))
    accumulator = tf.Variable(tf.fill([rows, DIM], 0.1))
    segments = tf.constant(np.repeat(np.arange(ids // 2), 2))
    batches = [tf.constant(rng.integers(0, rows, ids)) for _ in range(50)]

    @tf.function(autograph=False)
    def step(batch: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            pooled = _average(table, batch, segments, ids // 2, lookup)
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
    """Alternates the sizes and lookups, writes results/embedding_access.{json,md}."""
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
    sizes = {"small": args.small, "large": args.large}
    times: dict[tuple[str, str], list[float]] = {(s, k): [] for k in LOOKUPS for s in sizes}
    for r in range(args.rounds):
        for size, lookup in times:
            times[size, lookup].append(step_ms(sizes[size], args.ids, args.steps, r, lookup))
    values: dict[str, object] = {
        "ids_per_step": args.ids, "dim": DIM, "rounds": args.rounds,
        "small_rows": args.small, "large_rows": args.large,
        "large_table_mib": round(args.large * DIM * 4 / 2**20),
        "load_average_1m_at_start": round(load, 2)}
    for (size, lookup), got in times.items():
        values[f"{lookup}_{size}_step_ms"] = round(float(np.mean(got)), 2)
    for lookup in LOOKUPS:
        values[f"{lookup}_step_ms_ratio_large_vs_small"] = round(
            values[f"{lookup}_large_step_ms"] / values[f"{lookup}_small_step_ms"], 2)

    def markdown(v: dict) -> str:
        return "\n".join([
            "# Sparse embedding update against the table's size", "",
            f"Command: `{v['command']}`; {v['machine_cpus']} CPUs (load "
            f"{v['load_average_1m_at_start']} at the start), one TF thread. One step: an "
            f"average over {v['ids_per_step']:,} uniform ids and Adagrad's sparse update, "
            f"{v['dim']} floats a row, mean of {v['rounds']} alternating rounds.", "",
            "| lookup | ms per step, 4,000 rows | ms per step, "
            f"{v['large_rows']:,} rows ({v['large_table_mib']} MiB) | large / small |",
            "|---|---|---|---|",
            *(f"| `{k}` | {v[f'{k}_small_step_ms']} | {v[f'{k}_large_step_ms']} | "
              f"{v[f'{k}_step_ms_ratio_large_vs_small']} |" for k in LOOKUPS), "",
            "`gather` is the towers' lookup: the distinct rows of the batch, then their "
            "average. `dense` is their former one, `tf.sparse.segment_mean` over the table "
            "variable: after a sparse update TensorFlow copies a variable whole on every "
            "dense read, so each step also copies the table. Both grow with the table: "
            "the small one fits in the CPU's caches, the rows of the large one are mostly "
            "cache and page-table misses.", ""])

    write_results(NAME, values, markdown)


if __name__ == "__main__":
    main()
