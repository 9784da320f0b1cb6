"""Quality experiment: every Trainer variant on MovieLens-1M, full and 10% data.

Runs on a finished pipeline run (``make run``): it reuses that run's
Transform output (vocabularies, transformed train / eval / catalog splits)
and FeatureCorrelation artefact, and trains with the Trainer's own code
(``components.trainer.run.train``), one model after another in this process.

Protocol (written to the results file as well):

* **Validation split**: 10% of the training pairs (seeded permutation),
  carved out of the training split; the pipeline's eval split is the test
  split and is never used to choose anything.
* **Regimes**: ``full`` (all training pairs) and ``10pct`` (a uniform 10%
  sample of the training pairs, fixed across seeds). Same number of
  optimisation steps in both.
* **Grid** (per regime, seed 0, trained on training-minus-validation, chosen
  by validation Recall@50): temperature tau on the baseline, then SSL weight
  alpha on CFM, then value-dropout rate d_r on CFM. The chosen values apply
  to every variant of that regime.
* **Test**: every variant x ``--seeds`` seeds, trained on the regime's data,
  scored on the eval split by brute force over the whole catalog (the
  query's own item excluded), Recall@K and MAP@K (K = 10, 50), overall and
  by the positive item's bucket (head / tail / cold).

Finished cells are cached in ``<work>/cells.json``: a re-run continues.
Run from the repository root: ``python benchmarks/quality.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402

from benchmarks.common import RESULTS, latest_artifact, write_results  # noqa: E402
from components.correlation import report as correlation_report  # noqa: E402
from components.evaluate.metrics import map_at_k, positive_ranks, recall_at_k  # noqa: E402
from components.index.search import normalize  # noqa: E402
from components.trainer import data  # noqa: E402
from components.trainer import hparams as hparams_lib  # noqa: E402
from components.trainer.run import train  # noqa: E402
from pipeline import nodes  # noqa: E402
from transforms import features  # noqa: E402
from transforms.spec import load_spec  # noqa: E402

KS = (10, 50)
SLICES = ("overall", "head", "tail", "cold")
REGIMES = ("full", "10pct")
TAUS = (0.05, 0.07, 0.1)
ALPHAS = (0.3, 1.0, 3.0)
DROPOUTS = (0.1, 0.3, 0.5)
VALIDATION_SHARE = 0.1
SAMPLE_SHARE = 0.1
SPLIT_SEED = 1234


def _records(split_dir: str) -> np.ndarray:
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*")))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536)
    return np.concatenate([b.numpy() for b in ds]).astype(object)


def _write(records: np.ndarray, folder: str) -> str:
    if os.path.isdir(folder):
        return folder
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tf.io.TFRecordWriter(os.path.join(tmp, "part-00000.gz"), "GZIP") as w:
        for r in records:
            w.write(r)
    os.rename(tmp, folder)
    return folder


def prepare_splits(train_dir: str, work: str) -> dict[str, object]:
    """Training folders of each regime / phase, and the validation records."""
    train = _records(train_dir)
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(len(train))
    n_val = int(round(VALIDATION_SHARE * len(train)))
    is_val = np.zeros(len(train), bool)
    is_val[order[:n_val]] = True
    in_sample = np.zeros(len(train), bool)
    in_sample[rng.permutation(len(train))[: int(round(SAMPLE_SHARE * len(train)))]] = True
    return {
        "sizes": {"train": len(train), "validation": int(is_val.sum()),
                  "10pct": int(in_sample.sum()), "grid_full": int((~is_val).sum()),
                  "grid_10pct": int((in_sample & ~is_val).sum())},
        "validation": train[is_val],
        "dirs": {("test", "full"): train_dir,
                 ("test", "10pct"): _write(train[in_sample], os.path.join(work, "10pct")),
                 ("grid", "full"): _write(train[~is_val], os.path.join(work, "grid_full")),
                 ("grid", "10pct"): _write(train[in_sample & ~is_val],
                                           os.path.join(work, "grid_10pct"))},
    }


def _parse(records: np.ndarray, feature_spec: dict) -> tuple[dict[str, tf.Tensor], np.ndarray]:
    """Transformed features (ragged ids) and each row's item bucket."""
    parsed = data.to_ragged(tf.io.parse_example(tf.constant(list(records)), feature_spec))
    bucket = parsed.pop(features.ITEM_BUCKET)
    if isinstance(bucket, tf.RaggedTensor):
        bucket = bucket.to_tensor(default_value=b"")
    return parsed, np.array([b.decode() for b in tf.reshape(bucket, [-1]).numpy()])


def _id_index(batch: dict, key: str) -> np.ndarray:
    value = batch[key]
    if isinstance(value, tf.RaggedTensor):
        value = value.to_tensor(default_value=-1)
    return value.numpy().reshape(len(value), -1)[:, 0]


class Evaluation:
    """Queries of one split and the catalog, parsed once, scored per model."""

    def __init__(self, records: np.ndarray, catalog: np.ndarray, feature_spec: dict,
                 spec) -> None:
        self.catalog, _ = _parse(catalog, feature_spec)
        self.queries, self.bucket = _parse(records, feature_spec)
        item_key = features.item_key(spec.item_id)
        catalog_ids = _id_index(self.catalog, item_key)
        column = {int(v): i for i, v in enumerate(catalog_ids)}
        self.positive = np.array([column[int(v)] for v in _id_index(self.queries, item_key)])
        query_key = features.query_key(spec.item_id)
        self.own = (np.array([column.get(int(v), -1) for v in
                              _id_index(self.queries, query_key)])
                    if query_key in self.queries else None)
        self.n_items = len(catalog_ids)

    @staticmethod
    def _embed(fn, batch: dict, n: int, size: int = 8192) -> np.ndarray:
        out = []
        for start in range(0, n, size):
            out.append(fn({k: v[start:start + size] for k, v in batch.items()}).numpy())
        return normalize(np.concatenate(out))

    def score(self, model) -> dict[str, float]:
        items = self._embed(model.item_embedding, self.catalog, self.n_items)
        queries = self._embed(model.query_embedding, self.queries, len(self.positive))
        ranks = np.empty(len(self.positive), np.int64)
        for start in range(0, len(queries), 8192):
            scores = queries[start:start + 8192] @ items.T
            rows = np.arange(len(scores))
            if self.own is not None:
                own = self.own[start:start + 8192]
                scores[rows[own >= 0], own[own >= 0]] = -np.inf
            ranks[start:start + 8192] = positive_ranks(scores, self.positive[start:start + 8192])
        out = {}
        for name in SLICES:
            mask = np.ones(len(ranks), bool) if name == "overall" else self.bucket == name
            out[f"{name}_examples"] = int(mask.sum())
            for k in KS:
                out[f"{name}_recall_at_{k}"] = recall_at_k(ranks[mask], k)
                out[f"{name}_map_at_{k}"] = map_at_k(ranks[mask], k)
        return out


class Cells:
    """Finished (key -> metrics) results, saved after each one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.values = json.load(open(path)) if os.path.exists(path) else {}

    def get_or_run(self, key: str, fn) -> dict[str, float]:
        if key not in self.values:
            start = time.perf_counter()
            self.values[key] = {**fn(), "train_eval_s": round(time.perf_counter() - start, 1)}
            with open(self.path + ".tmp", "w") as f:
                json.dump(self.values, f, indent=1, sort_keys=True)
            os.replace(self.path + ".tmp", self.path)
            print(f"[quality] {key}: overall recall@50 "
                  f"{self.values[key]['overall_recall_at_50']:.4f}", flush=True)
        return self.values[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-root", default="runs/movielens-1m")
    parser.add_argument("--dataset", default="data/movielens-1m/dataset.yaml")
    parser.add_argument("--work", default="runs/quality-work")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=hparams_lib.HParams().train_steps)
    parser.add_argument("--variants", default=",".join(hparams_lib.VARIANTS))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    spec = load_spec(args.dataset)
    examples = latest_artifact(args.run_root, nodes.TRANSFORM, "transformed_examples")
    transform_dir = latest_artifact(args.run_root, nodes.TRANSFORM, "transform_graph")
    catalog_dir = features.split_dir(examples, features.CATALOG_SPLIT)
    correlation = correlation_report.read(
        latest_artifact(args.run_root, nodes.CORRELATION, "correlation"))
    os.makedirs(args.work, exist_ok=True)
    splits = prepare_splits(features.split_dir(examples, features.TRAIN_SPLIT), args.work)
    feature_spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    catalog = _records(catalog_dir)
    validation = Evaluation(splits["validation"], catalog, feature_spec, spec)
    test = Evaluation(_records(features.split_dir(examples, features.EVAL_SPLIT)), catalog,
                      feature_spec, spec)
    cells = Cells(os.path.join(args.work, "cells.json"))

    def run(phase: str, regime: str, variant: str, seed: int, **hp: float) -> dict:
        key = "/".join([phase, regime, variant, f"seed{seed}",
                        *(f"{k}={v}" for k, v in sorted(hp.items()))])

        def fit() -> dict[str, float]:
            tf_keras.backend.clear_session()
            params = hparams_lib.from_dict({"variant": variant, "seed": seed,
                                            "train_steps": args.train_steps, **hp})
            log_dir = os.path.join(args.work, "logs", key.replace("/", "_"))
            model, _ = train(spec, params, transform_dir, splits["dirs"][(phase, regime)],
                             catalog_dir, log_dir, correlation)
            return (validation if phase == "grid" else test).score(model)

        return cells.get_or_run(key, fit)

    def best(regime: str, variant: str, name: str, options: tuple, fixed: dict) -> float:
        """The option of ``name`` with the best validation Recall@50 (ties: the middle)."""
        scored = [(run("grid", regime, variant, 0, **fixed, **{name: o})
                   ["overall_recall_at_50"], -abs(i - len(options) // 2), o)
                  for i, o in enumerate(options)]
        return max(scored)[2]

    chosen = {}
    for regime in REGIMES:
        tau = best(regime, "baseline", "temperature", TAUS, {})
        alpha = best(regime, "cfm", "alpha", ALPHAS, {"temperature": tau, "dropout_rate": 0.3})
        rate = best(regime, "cfm", "dropout_rate", DROPOUTS,
                    {"temperature": tau, "alpha": alpha})
        chosen[regime] = {"temperature": tau, "alpha": alpha, "dropout_rate": rate}
    for regime in REGIMES:
        for variant in variants:
            for seed in range(args.seeds):
                run("test", regime, variant, seed, **chosen[regime])
    values = _flatten(cells.values, chosen, variants, args.seeds, splits)
    values["cfm_grouping_measure"] = correlation.get("measure", "nmi")
    values["cfm_groups"] = "; ".join(f"{seed}: {'+'.join(group)}"
                                     for seed, group in correlation["groups"].items())
    values["logq_correction_default"] = hparams_lib.HParams().logq_correction
    write_results("quality", values, _markdown)
    _chart(cells.values, chosen, variants, args.seeds)


def _test_cells(values: dict, chosen: dict, regime: str, variant: str, seeds: int) -> list:
    hp = "/".join(f"{k}={v}" for k, v in sorted(chosen[regime].items()))
    return [values[f"test/{regime}/{variant}/seed{s}/{hp}"] for s in range(seeds)]


def _flatten(values: dict, chosen: dict, variants: list[str], seeds: int, splits: dict
             ) -> dict[str, object]:
    out: dict[str, object] = {"seeds": seeds, "validation_share": VALIDATION_SHARE,
                              "sample_share": SAMPLE_SHARE,
                              "grid_temperature": list(TAUS), "grid_alpha": list(ALPHAS),
                              "grid_dropout_rate": list(DROPOUTS)}
    for name, size in splits["sizes"].items():
        out[f"pairs_{name}"] = size
    for regime in REGIMES:
        for k, v in chosen[regime].items():
            out[f"{regime}_chosen_{k}"] = v
        for variant in variants:
            cells = _test_cells(values, chosen, regime, variant, seeds)
            for metric in cells[0]:
                if metric == "train_eval_s" or metric.endswith("_examples"):
                    continue
                xs = np.array([c[metric] for c in cells], float)
                out[f"{regime}_{variant}_{metric}_mean"] = round(float(np.mean(xs)), 5)
                out[f"{regime}_{variant}_{metric}_std"] = round(float(np.std(xs, ddof=1)), 5)
        for name in SLICES:
            out[f"{regime}_test_{name}_examples"] = cells[0][f"{name}_examples"]
        if "baseline" in variants and "cfm" in variants:
            for name in SLICES:
                for k in KS:
                    base = out[f"{regime}_baseline_{name}_recall_at_{k}_mean"]
                    cfm = out[f"{regime}_cfm_{name}_recall_at_{k}_mean"]
                    out[f"{regime}_cfm_vs_baseline_{name}_recall_at_{k}_relative_gain"] = (
                        round(cfm / base - 1, 4) if base else None)
    for key, cell in values.items():
        if key.startswith("grid/"):
            out["validation_recall_at_50__" + key[5:].replace("/", "__")] = round(
                cell["overall_recall_at_50"], 5)
    return out


def _markdown(values: dict[str, object]) -> str:
    variants = [v for v in hparams_lib.VARIANTS
                if f"full_{v}_overall_recall_at_10_mean" in values]
    measure = {"ami": "adjusted MI (chance-corrected)", "nmi": "plug-in NMI"}[
        values["cfm_grouping_measure"]]
    lines = ["# Quality: Trainer variants on MovieLens-1M (item-to-item retrieval)", "",
             f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. "
             f"Mean ± standard deviation over {values['seeds']} seeds; test = the "
             "pipeline's eval split, brute force over the whole catalog (the query's own "
             "item excluded). Hyper-parameters chosen per regime on a validation split "
             f"({values['validation_share']:.0%} of the training pairs), never on the test "
             "split. Slices follow the positive item's bucket (head = top 10% of items by "
             "training count, tail = the rest seen in training, cold = unseen).", "",
             f"Training pairs: {values['pairs_train']} (full), {values['pairs_10pct']} (10%); "
             f"validation pairs: {values['pairs_validation']}.", "",
             f"Every CFM row used groups formed by **{measure}** "
             f"(`cfm_grouping_measure`), seed + floor(k/2) features masked for `cfm` and "
             f"k // 2 for `cfm_balanced`: {values['cfm_groups']}. logQ correction: "
             f"{'on' if values['logq_correction_default'] else 'off'} for every variant "
             "(the Trainer's default).", ""]
    for regime in REGIMES:
        chosen = ", ".join(f"{k} = {values[f'{regime}_chosen_{k}']}"
                           for k in ("temperature", "alpha", "dropout_rate"))
        lines += [f"## {'Full training data' if regime == 'full' else '10% of training data'}",
                  "", f"Chosen on validation: {chosen}.", ""]
        for name in SLICES:
            lines += [f"**{name}** ({values[f'{regime}_test_{name}_examples']} test pairs)", "",
                      "| method | Recall@10 | Recall@50 | MAP@10 | MAP@50 |",
                      "|---|---|---|---|---|"]
            for v in variants:
                cells = []
                for metric in ("recall_at_10", "recall_at_50", "map_at_10", "map_at_50"):
                    mean = values[f"{regime}_{v}_{name}_{metric}_mean"]
                    std = values[f"{regime}_{v}_{name}_{metric}_std"]
                    cells.append(f"{mean:.4f} ± {std:.4f}")
                lines.append(f"| {v} | " + " | ".join(cells) + " |")
            lines.append("")
    gains = [k for k in values if "_cfm_vs_baseline_" in k]
    if gains:
        lines += ["## CFM vs baseline, relative Recall gain", "",
                  "| regime | " + " | ".join(f"{s} R@{k}" for s in SLICES for k in KS) + " |",
                  "|---|" + "---|" * (len(SLICES) * len(KS))]
        for regime in REGIMES:
            row = [values.get(f"{regime}_cfm_vs_baseline_{s}_recall_at_{k}_relative_gain")
                   for s in SLICES for k in KS]
            lines.append(f"| {regime} | " + " | ".join(
                "n/a" if g is None else f"{g:+.1%}" for g in row) + " |")
        lines.append("")
    lines += ["## Validation grid (Recall@50 on the validation split, seed 0)", "",
              "| run | Recall@50 |", "|---|---|"]
    for key in sorted(k for k in values if k.startswith("validation_recall_at_50__")):
        lines.append(f"| {key[len('validation_recall_at_50__'):].replace('__', ' / ')} | "
                     f"{values[key]:.4f} |")
    lines += ["", "![Recall@50 by slice](quality.png)", ""]
    return "\n".join(lines)


def _chart(values: dict, chosen: dict, variants: list[str], seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
    width = 0.8 / len(variants)
    for ax, regime in zip(axes, REGIMES):
        for i, variant in enumerate(variants):
            cells = _test_cells(values, chosen, regime, variant, seeds)
            means = [np.mean([c[f"{s}_recall_at_50"] for c in cells]) for s in SLICES]
            stds = [np.std([c[f"{s}_recall_at_50"] for c in cells], ddof=1) for s in SLICES]
            ax.bar(np.arange(len(SLICES)) + i * width, means, width, yerr=stds, label=variant)
        ax.set_xticks(np.arange(len(SLICES)) + 0.4 - width / 2)
        ax.set_xticklabels(SLICES)
        ax.set_title(f"Recall@50, {'full' if regime == 'full' else '10%'} training data")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "quality.png"), dpi=110)


if __name__ == "__main__":
    main()
