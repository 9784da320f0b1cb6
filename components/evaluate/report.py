"""Readable evaluation results: metric tables by slice, blessing verdict, results page.

Reads the Evaluator's output with TFMA's own loaders
(``tfma.load_eval_result``, ``tfma.load_validation_result``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer

from components.evaluate.config import GATE_METRIC, KS, metric_name
from transforms import features

COLUMNS = ("example_count", *(metric_name(kind, k) for kind in ("recall", "map") for k in KS))
PAGE = "evaluation.md"
CHART = "recall_by_slice.png"


OVERALL = "overall"


def slice_label(slice_key: Any) -> str:
    """``overall`` or ``feature=value`` (``a=x, b=y`` for crosses)."""
    if not slice_key:
        return OVERALL
    parts = []
    for name, value in slice_key:
        value = value.decode() if isinstance(value, bytes) else value
        parts.append(f"{name}={value}")
    return ", ".join(parts)


def bucket_label(bucket: str) -> str:
    """The label of the head / tail / cold slice ``bucket`` (``item_bucket=head``)."""
    return slice_label([(features.ITEM_BUCKET, bucket)])


def _model_specs(eval_uri: str) -> list[Any]:
    """The model specs the Evaluator ran with (from its ``eval_config.json``)."""
    return list(eval_config_writer.load_eval_run(eval_uri)[0].model_specs)


def metrics_by_slice(eval_uri: str) -> dict[str, dict[str, float]]:
    """Slice label -> metric name -> value of the evaluated (candidate) model."""
    names = [s.name for s in _model_specs(eval_uri) if not s.is_baseline]
    result = tfma.load_eval_result(eval_uri, model_name=names[0] if names else None)
    out: dict[str, dict[str, float]] = {}
    for slice_key, by_output in result.slicing_metrics:
        values = {}
        for by_sub_key in by_output.values():
            for metrics in by_sub_key.values():
                for name, value in metrics.items():
                    if isinstance(value, dict) and "doubleValue" in value:
                        values[name] = float(value["doubleValue"])
        out[slice_label(slice_key)] = values
    return out


def has_baseline(eval_uri: str) -> bool:
    """Whether the evaluation compared against a baseline (a previously blessed model)."""
    return any(s.is_baseline for s in _model_specs(eval_uri))


def _order(label: str) -> tuple[int, str]:
    first = [OVERALL, *map(bucket_label, features.BUCKETS)]
    return (first.index(label) if label in first else len(first), label)


def table(metrics: dict[str, dict[str, float]], markdown: bool = False) -> list[str]:
    """One row per slice (overall, head, tail, cold, then the rest), one column per metric."""
    rows = [[label, *(_cell(metrics[label].get(c)) for c in COLUMNS)]
            for label in sorted(metrics, key=_order)]
    header = ["slice", *COLUMNS]
    if markdown:
        return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
                *("| " + " | ".join(r) + " |" for r in rows)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
            for r in [header, *rows]]


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(int(value)) if float(value).is_integer() and value > 1 else f"{value:.4f}"


def verdict(eval_uri: str) -> tuple[bool, list[str]]:
    """(blessed by the thresholds?, one line per failed threshold)."""
    result = tfma.load_validation_result(eval_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        for failure in per_slice.failures:
            key = failure.metric_key
            what = key.name + (" change vs latest blessed" if key.is_diff else "")
            failures.append(f"{what}: {failure.metric_value.double_value.value:.4f} "
                            f"fails {_threshold(failure.metric_threshold)}")
    if result.missing_thresholds:
        failures.append(f"metrics with thresholds were not computed: "
                        f"{[k.name for k in result.missing_thresholds]}")
    return bool(result.validation_ok), failures


def _threshold(threshold: Any) -> str:
    if threshold.HasField("value_threshold"):
        return f"floor >= {threshold.value_threshold.lower_bound.value:g}"
    if threshold.HasField("change_threshold"):
        return f"allowed change >= {threshold.change_threshold.absolute.value:g}"
    return str(threshold).replace("\n", " ")


def write_page(eval_uri: str, metrics: dict[str, dict[str, float]], out_dir: str,
               blessed: bool, failures: list[str]) -> str:
    """Markdown page (table + PNG chart of Recall@K by slice); returns its path.

    ``metrics`` is :func:`metrics_by_slice` of ``eval_uri``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    labels = sorted(metrics, key=_order)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4))
    width = 0.8 / len(KS)
    for i, k in enumerate(KS):
        ax.bar([x + i * width for x in range(len(labels))],
               [metrics[s].get(metric_name("recall", k), 0.0) for s in labels], width,
               label=f"Recall@{k}")
    ax.set_xticks([x + width * (len(KS) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("recall")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, CHART), dpi=110)
    plt.close(fig)
    status = "BLESSED" if blessed else "NOT BLESSED: " + "; ".join(failures)
    lines = ["# Evaluation", "", f"Evaluator output: `{eval_uri}` "
             "(`tfma.load_eval_result` reads it).", "", f"Verdict: **{status}** "
             f"(gate: overall {GATE_METRIC}).", "", *table(metrics, markdown=True), "",
             f"![Recall by slice]({CHART})", ""]
    path = os.path.join(out_dir, PAGE)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
