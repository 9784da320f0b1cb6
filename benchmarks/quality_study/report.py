"""The study's results: flat keys of ``results/quality.json``, the page and its chart.

Keys (flat, as ``benchmarks/common.write_results`` writes them): the
protocol's numbers; ``<regime>_<split>_pairs``,
``<regime>_validation_cold_items`` and ``<regime>_max_steps``;
``<regime>_<variant>_<setting>``; per regime and variant the chosen and
trained steps and, for every score key (``<slice>_<metric>``),
``..._mean`` and ``..._std`` over seeds, of the test split and (under
``<regime>_<variant>_validation_``) of validation; the test examples by
slice; each variant's relative Recall@K gain over the baseline by slice;
each validation search as ``search_<NN>_*``; the default-variant rule's
inputs and choice (:func:`default_rule`).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np

from benchmarks.common import RESULTS
from benchmarks.quality_study import protocol
from components.evaluate.config import GATE_METRIC, KS, metric_name
from components.evaluate.metrics import RecallAtK
from components.evaluate.report import OVERALL
from components.trainer import hparams as hparams_lib
from transforms import features

NAME = "quality"
CHART = f"{NAME}.png"
REGIME_TITLES = {
    "ml1m_full": "MovieLens-1M, full training data",
    "ml1m_10pct": "MovieLens-1M, 10% of the training data",
    "ml1m_cold_items": f"MovieLens-1M, {protocol.COLD_ITEM_PERCENT}% of the items held out "
                       "(cold)",
    "synthetic_full": "Feature-rich synthetic benchmark, full training data",
    "synthetic_10pct": "Feature-rich synthetic benchmark, 10% of the training data",
    "rich_full": f"Long-tail rich catalog ({protocol.RICH_ITEMS:,} items, growing "
                 f"vocabularies), {protocol.COLD_ITEM_PERCENT}% of the items held out (cold), "
                 "full training data",
    "rich_10pct": f"Long-tail rich catalog ({protocol.RICH_ITEMS:,} items), "
                  f"{protocol.COLD_ITEM_PERCENT}% of the items held out (cold), 10% of the "
                  "training data",
}
#: The settings a variant's chosen values can have: the searched ones.
SETTINGS = tuple(protocol.GRIDS)
DEFAULT_KEY = "default_variant"
#: Suffix of a search's seed-mean validation scores (the selection metric, by grid value).
VALIDATION_SCORES = f"_validation_{GATE_METRIC}"
#: The page's table columns: (slice, K of Recall@K).
TABLE = ((OVERALL, KS[0]), (OVERALL, protocol.GATE_K),
         *((b, protocol.GATE_K) for b in features.BUCKETS))
GATE_TITLE = f"Recall@{protocol.GATE_K}"
#: The slices of the page's "vs baseline" column.
GAIN_SLICES = (OVERALL, features.TAIL, features.COLD)


def _key(*parts: object) -> str:
    return "_".join(str(p) for p in parts)


def _gain_key(regime: str, variant: str, slice_name: str, k: int) -> str:
    return _key(regime, variant, "vs", protocol.BASELINE, slice_name,
                metric_name(RecallAtK.KIND, k), "relative_gain")


def flatten(results: dict, chosen: dict, searches: list, variants: list[str],
            regimes: Mapping[str, protocol.RegimeSpec], seeds: list[int],
            sizes: dict) -> dict[str, object]:
    """The flat results keys (see the module docstring).

    ``results``: ``regime/variant`` -> {step, trained, tests (one score per seed)};
    ``regimes``: the regimes run, with the specs they ran with.
    """
    out: dict[str, object] = {"seeds": len(seeds),
                              "validation_share": protocol.VALIDATION_SHARE,
                              "validation_cold_item_percent":
                                  protocol.VALIDATION_COLD_ITEM_PERCENT,
                              "validation_max_pairs": protocol.VALIDATION_MAX_PAIRS,
                              "logq_correction": protocol.LOGQ_CORRECTION,
                              "tuning_seeds": len(protocol.TUNING_SEEDS),
                              "cold_item_percent": protocol.COLD_ITEM_PERCENT,
                              "budget_factor": protocol.BUDGET_FACTOR,
                              "budget_extensions": protocol.BUDGET_EXTENSIONS,
                              "budget_min_gain": protocol.BUDGET_MIN_GAIN}
    for regime, spec in regimes.items():
        for name, size in sizes[regime].items():
            out[_key(regime, name) if name.endswith("_items") else _key(regime, name, "pairs")
                ] = size
        out[_key(regime, "max_steps")] = spec.start_steps
    for regime in regimes:
        for variant in variants:
            for k, v in chosen[regime][variant].items():
                if k in SETTINGS:
                    out[_key(regime, variant, k)] = v
    for regime in regimes:
        for variant in variants:
            out.update(_cell(regime, variant, results[f"{regime}/{variant}"]))
        first = results[f"{regime}/{variants[0]}"]["tests"][0]
        for name in protocol.SLICES:
            out[_key(regime, "test", name, protocol.EXAMPLES)] = first[
                protocol.score_key(name, protocol.EXAMPLES)]
        if protocol.BASELINE in variants:
            out.update(_gains(out, regime, variants))
    for i, s in enumerate(searches):
        prefix = f"search_{i:02d}"
        out[prefix + "_regime"] = s["regime"]
        out[prefix + "_variant"] = s["variant"]
        out[prefix + "_parameter"] = s["parameter"]
        out[prefix + "_grid"] = s["grid"]
        out[prefix + VALIDATION_SCORES] = s["scores"]
        out[prefix + "_chosen"] = s["chosen"]
        out[prefix + "_at_edge"] = s["at_edge"]
    return out


def _cell(regime: str, variant: str, cell: dict) -> dict[str, object]:
    """One regime and variant: steps, and every metric's mean and std over seeds (test,
    and validation under ``<regime>_<variant>_validation_``)."""
    out: dict[str, object] = {_key(regime, variant, "train_steps"): cell["step"],
                              _key(regime, variant, "trained_steps"): cell["trained"]}
    for prefix, scores in (((regime, variant), cell["tests"]),
                           ((regime, variant, "validation"), cell["validations"])):
        for metric in scores[0]:
            if metric.endswith("_" + protocol.EXAMPLES):
                continue
            xs = np.array([t[metric] for t in scores], float)
            out[_key(*prefix, metric, "mean")] = round(float(np.mean(xs)), 5)
            out[_key(*prefix, metric, "std")] = round(float(np.std(xs, ddof=1)), 5)
    return out


def _validation(values: Mapping[str, object], regime: str, variant: str, slice_name: str
                ) -> float:
    """Seed-mean validation Recall@K (the gate's K) at the chosen checkpoint."""
    metric = protocol.score_key(slice_name, metric_name(RecallAtK.KIND, protocol.GATE_K))
    return float(values[_key(regime, variant, "validation", metric, "mean")])


def default_rule(values: Mapping[str, object], variants: list[str], regimes: list[str]
                 ) -> dict[str, object]:
    """The pipeline's default variant by the protocol's rule, from validation only.

    Eligible: every variant whose cold-slice validation Recall@K is at most
    ``COLD_MAX_LOSS`` below the baseline's on each regime of
    ``COLD_GUARD_REGIMES`` that ran (not eligible where the baseline's is
    0: no loss can be measured). Chosen: the eligible variant with the best
    mean (over ``regimes``) relative overall validation gain over the
    baseline (the baseline's gain is 0); None without the baseline.

    Returns:
      ``default_variant`` and, per variant, ``default_rule_<variant>_eligible``,
      ``default_rule_<variant>_overall_validation_gain`` and per guard regime
      ``default_rule_<variant>_<regime>_cold_validation_gain``.
    """
    base = protocol.BASELINE
    guards = [r for r in protocol.COLD_GUARD_REGIMES if r in regimes]
    out: dict[str, object] = {"default_rule_cold_max_loss": protocol.COLD_MAX_LOSS,
                              "default_rule_guard_regimes": ",".join(guards)}
    if base not in variants:
        out[DEFAULT_KEY] = None                 # the rule is relative to the baseline
        return out

    def gain(regime: str, variant: str, slice_name: str) -> Optional[float]:
        ref = _validation(values, regime, base, slice_name)
        return _validation(values, regime, variant, slice_name) / ref - 1 if ref else None

    best, best_gain = base, 0.0
    for v in variants:
        overall = [g for g in (gain(r, v, OVERALL) for r in regimes) if g is not None]
        mean = float(np.mean(overall)) if overall else 0.0
        eligible = True
        for r in guards:
            cold = gain(r, v, features.COLD)
            out[_key("default_rule", v, r, "cold_validation_gain")] = (
                None if cold is None else round(cold, 4))
            eligible &= v == base or (cold is not None and cold >= -protocol.COLD_MAX_LOSS)
        out[_key("default_rule", v, "overall_validation_gain")] = round(mean, 4)
        out[_key("default_rule", v, "eligible")] = bool(eligible)
        if eligible and mean > best_gain:
            best, best_gain = v, mean
    out[DEFAULT_KEY] = best
    return out


def _gains(out: Mapping[str, object], regime: str, variants: list[str]) -> dict[str, object]:
    """Each variant's relative Recall@K gain over the baseline, by slice."""
    gains: dict[str, object] = {}
    for variant in variants:
        if variant == protocol.BASELINE:
            continue
        for name in protocol.SLICES:
            for k in KS:
                metric = protocol.score_key(name, metric_name(RecallAtK.KIND, k))
                base = out[_key(regime, protocol.BASELINE, metric, "mean")]
                mine = out[_key(regime, variant, metric, "mean")]
                gains[_gain_key(regime, variant, name, k)] = (
                    round(mine / base - 1, 4) if base else None)
    return gains


def _mean_std(values: Mapping[str, object], regime: str, variant: str, slice_name: str,
              k: int) -> tuple[float, float]:
    metric = protocol.score_key(slice_name, metric_name(RecallAtK.KIND, k))
    return (values[_key(regime, variant, metric, "mean")],
            values[_key(regime, variant, metric, "std")])


def _recall(k: int) -> str:
    return f"R@{k}"


def markdown(values: Mapping[str, object]) -> str:
    """The results page of ``values`` (the flat keys, with ``command`` and machine facts)."""
    regimes = [r for r in protocol.REGIMES if _key(r, "max_steps") in values]
    variants = [v for v in hparams_lib.VARIANTS
                if _key(regimes[0], v, protocol.SELECTION_METRIC, "mean") in values]
    lines = [*_intro(values, len(regimes)), *_default_section(values, variants),
             "## Chosen settings (each regime's own validation)", "",
             "| regime | variant | " + " | ".join(SETTINGS) + " |",
             "|---|---|" + "---|" * len(SETTINGS)]
    for r in regimes:
        for v in variants:
            cells = [values.get(_key(r, v, k), "") for k in SETTINGS]
            lines.append(f"| {r} | {v} | " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for regime in regimes:
        lines += _regime_section(values, regime, variants)
    lines += [f"## Validation searches (seed-mean {GATE_TITLE} at the best checkpoint)", "",
              "| regime | variant | parameter | grid: score | chosen | at an end |",
              "|---|---|---|---|---|---|"]
    for key in sorted(k for k in values if k.startswith("search_") and k.endswith("_grid")):
        prefix = key[: -len("_grid")]
        pairs = ", ".join(f"{g:g}: {s:.4f}" for g, s in zip(
            values[key], values[prefix + VALIDATION_SCORES]))
        lines.append(f"| {values[prefix + '_regime']} | {values[prefix + '_variant']} | "
                     f"{values[prefix + '_parameter']} | {pairs} | {values[prefix + '_chosen']} "
                     f"| {'yes' if values[prefix + '_at_edge'] else 'no'} |")
    lines += ["", f"![{GATE_TITLE} by slice]({CHART})", ""]
    return "\n".join(lines)


def _default_section(values: Mapping[str, object], variants: list[str]) -> list[str]:
    """The default-variant rule, its inputs per variant, and its choice."""
    guards = [g for g in str(values["default_rule_guard_regimes"]).split(",") if g]
    loss = values["default_rule_cold_max_loss"]
    lines = ["## The pipeline's default variant", ""]
    if values[DEFAULT_KEY] is None:
        return lines + ["The default-variant rule needs the baseline; it did not run.", ""]
    where = (" on " + " and ".join(f"`{g}`" for g in guards)) if guards else (
        " (no cold-item regime ran)")
    lines += [f"Rule (validation only): among the variants whose cold-item validation "
              f"{GATE_TITLE} is at most {loss:.0%} below the baseline's{where}, the best mean "
              f"relative overall validation {GATE_TITLE} gain over the baseline across the "
              f"regimes. Chosen: **`{values[DEFAULT_KEY]}`**.", "",
              "| " + " | ".join(["variant", "mean overall validation gain",
                                 *(f"cold validation gain, {g}" for g in guards),
                                 "eligible"]) + " |",
              "|---|---|" + "---|" * len(guards) + "---|"]

    def percent(x: object) -> str:
        return "n/a" if x is None else f"{x:+.1%}"

    for v in variants:
        cold = [percent(values[_key("default_rule", v, g, "cold_validation_gain")])
                for g in guards]
        lines.append("| " + " | ".join([
            v, percent(values[_key("default_rule", v, "overall_validation_gain")]), *cold,
            "yes" if values[_key("default_rule", v, "eligible")] else "no"]) + " |")
    return lines + [""]


def _intro(values: Mapping[str, object], n_regimes: int) -> list[str]:
    """The page's title, setting, protocol, data and CFM-group paragraphs."""
    measure = {"ami": "adjusted MI (chance-corrected)", "nmi": "plug-in NMI"}[
        values["cfm_grouping_measure"]]
    gate = GATE_TITLE
    tail = {p: (values[f"{p}_values_on_le3_items_share"], values[f"{p}_items_le5_pairs_share"])
            for p in ("generator", "movielens")}
    return [
        f"# Quality: Trainer variants, each tuned on each of {n_regimes} regimes", "",
        f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. Mean ± standard "
        f"deviation over {values['seeds']} seeds. Test = the pipeline's eval split, brute "
        "force over the whole catalog (the query's own item excluded). Slices follow the "
        "positive item's bucket (head = top 10% of items by training count, tail = the rest "
        "seen in training, cold = never in training).", "",
        "**Protocol.** Every model trains on its regime's training pairs minus a validation "
        f"split: every row of {values['validation_cold_item_percent']}% of the items "
        f"(uniform over items: validation's cold slice) and {values['validation_share']:.0%} "
        f"of the other rows (seeded; at most {values['validation_max_pairs']:,} validation "
        "rows scored). Every choice is made on each regime's own validation split, on the "
        f"mean of {values['tuning_seeds']} seeds, by validation {gate} overall: the "
        f"baseline's temperature (logQ correction {'on' if values['logq_correction'] else 'off'}"
        " for every variant); `fd`'s feature-dropout rate; `mns`'s temperature; every SSL "
        "variant's alpha (SSL temperature = main temperature; the main temperature is the "
        "baseline's, or `mns`'s for the variants with extra negatives), then its SSL "
        "temperature at that alpha. A grid won at an end is extended. Step budget, one rule "
        f"for every variant: the checkpoint with the best seed-mean validation {gate}; a "
        "variant whose best checkpoint is its last and whose seed-mean validation score "
        f"still rose by at least {values['budget_min_gain']} over the last checkpoint "
        f"interval is retrained with {values['budget_factor']}x the steps (at most "
        f"{values['budget_extensions']} times). Nothing is chosen on the test split.", "",
        "**Long tail.** Feature values held by at most 3 items: "
        f"{tail['generator'][0]:.1%} in the long-tail rich catalog, {tail['movielens'][0]:.1%} "
        "in MovieLens-1M; items with at most 5 training pairs: "
        f"{tail['generator'][1]:.1%} and {tail['movielens'][1]:.1%}.", "",
        f"CFM groups (MovieLens-1M) by **{measure}**: {values['cfm_groups_ml1m']}. `cfm` masks "
        "the seed + floor(k/2) features, `cfm_balanced` k // 2.", ""]


def _regime_section(values: Mapping[str, object], regime: str, variants: list[str]
                    ) -> list[str]:
    """One regime's heading, sizes and table of Recall@K by slice and method."""
    columns = " | ".join(f"{s} {_recall(k)}" for s, k in TABLE)
    lines = [f"## {REGIME_TITLES[regime]} (`{regime}`)", "",
             f"Training pairs {values[_key(regime, 'train_pairs')]}, validation "
             f"{values[_key(regime, 'validation_pairs')]}, test "
             f"{values[_key(regime, 'test_pairs')]}; starting budget "
             f"{values[_key(regime, 'max_steps')]} steps. Steps: the "
             "chosen checkpoint of the steps trained (\"(last)\": the best checkpoint is "
             "the last one, with a gain over the one before below the extension "
             "threshold, or after the last extension).", "",
             f"| method | steps | {columns} | vs baseline: "
             f"{' / '.join(GAIN_SLICES)} {_recall(protocol.GATE_K)} |",
             "|---" * (len(TABLE) + 3) + "|"]
    for v in variants:
        steps = values[_key(regime, v, "train_steps")]
        trained = values[_key(regime, v, "trained_steps")]
        row = [f"{steps} of {trained}{' (last)' if steps == trained else ''}"]
        row += ["{:.4f} ± {:.4f}".format(*_mean_std(values, regime, v, s, k)) for s, k in TABLE]
        gains = [values.get(_gain_key(regime, v, s, protocol.GATE_K)) for s in GAIN_SLICES]
        row.append(" / ".join("" if v == protocol.BASELINE else
                              ("n/a" if g is None else f"{g:+.1%}") for g in gains))
        lines.append(f"| {v} | " + " | ".join(row) + " |")
    return lines + ["", "Test pairs by slice: " + ", ".join(
        f"{s} {values[_key(regime, 'test', s, protocol.EXAMPLES)]}" for s in protocol.SLICES)
        + ".", ""]


def chart(values: Mapping[str, object], variants: list[str], regimes: list[str],
          folder: str = RESULTS) -> str:
    """Bar chart of test Recall@K (the gate's K) by slice, one panel per regime; its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(regimes), 1, figsize=(12, 3.2 * len(regimes)))
    axes = np.atleast_1d(axes)
    width = 0.8 / len(variants)
    slices = protocol.SLICES
    for ax, regime in zip(axes, regimes):
        for i, variant in enumerate(variants):
            means, stds = zip(*(_mean_std(values, regime, variant, s, protocol.GATE_K)
                                for s in slices))
            ax.bar(np.arange(len(slices)) + i * width, means, width, yerr=stds, label=variant)
        ax.set_xticks(np.arange(len(slices)) + 0.4 - width / 2)
        ax.set_xticklabels(slices)
        ax.set_title(f"{GATE_TITLE}, {regime}")
    axes[0].legend(fontsize=7, ncol=5)
    fig.tight_layout()
    path = os.path.join(folder, CHART)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
