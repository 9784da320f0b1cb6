"""Assembles the correlation statistics into the artefact's files.

``correlation.json`` holds, for the features in spec order (id first): the MI,
expected MI under random matching, NMI and AMI matrices (diagonal: each
feature's entropy, its entropy, 1 and 1), entropies, support counts, which
features were hashed, degenerate features, which measure groups the
features (``measure``: ``ami`` by default, or ``nmi``), and for each seed
feature the others ranked by that measure plus the default CFM group.
``correlation_heatmap.png`` draws the grouping measure's matrix and names it.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from components.correlation import estimator

JSON_FILE = "correlation.json"
PNG_FILE = "correlation_heatmap.png"
MEASURE_TITLES = {"ami": "Adjusted MI (chance-corrected)", "nmi": "Normalized MI (plug-in)"}


def _sums(value: tuple[float, float, int]) -> estimator.TableSums:
    return estimator.TableSums(value[0], value[1])


Hists = Mapping[Any, estimator.Marginal]


def _count_histograms(stats: Mapping[Any, Any]) -> dict[Any, dict[Any, float]]:
    """``{(label, table key): {(weight, items): number of values}}`` from the tagged sums."""
    hists: dict[Any, dict[Any, float]] = {}
    for key, value in stats.items():
        if key[0] in ("vhist", "idhist", "lefthist", "righthist"):
            hists.setdefault((key[0], key[1]), {})[key[2]] = value
    return hists


def _id_pair(stats: Mapping[Any, Any], hists: Hists, f: str
             ) -> tuple[float, float, float, float]:
    """``(MI(id, f), EMI, H(f), H(id | f non-empty))`` from per-feature sums."""
    w = stats.get(("w", f), 0.0)
    if w <= 0:
        return 0.0, 0.0, 0.0, 0.0
    h_f = _sums(stats[("h", f)]).entropy()
    h_id = max(0.0, math.log(w) - stats[("wlogw", f)] / w)
    mi = min(max(h_f - stats[("wlogn", f)] / w, 0.0), h_f, h_id)
    emi = estimator.expected_mutual_information(
        hists.get(("idhist", f), {}), hists.get(("vhist", f), {}), stats[("items", f)], w)
    return mi, emi, h_f, h_id


def _pair(stats: Mapping[Any, Any], hists: Hists, f: str, g: str
          ) -> tuple[float, float, float, float]:
    """``(MI, EMI, H_f, H_g)`` over the items where both features have a value."""
    key = (f, g) if f < g else (g, f)
    if ("joint", key) not in stats:
        return 0.0, 0.0, 0.0, 0.0
    left, right = _sums(stats[("left", key)]), _sums(stats[("right", key)])
    joint = _sums(stats[("joint", key)])
    mi = estimator.mutual_information(joint, left, right)
    emi = estimator.expected_mutual_information(
        hists.get(("lefthist", key), {}), hists.get(("righthist", key), {}),
        stats.get(("pairitems", key), 0.0), joint.total)
    h_f, h_g = (left.entropy(), right.entropy()) if f < g else (right.entropy(), left.entropy())
    return mi, emi, h_f, h_g


def _degenerate(stats: Mapping[Any, Any], f: str) -> Optional[str]:
    distinct = stats.get(("distinct", f), 0)
    if distinct == 0:
        return "no catalog item has a value"
    if distinct == 1:
        return "a single value in the whole catalog (entropy 0)"
    return None


def _matrices(stats: Mapping[Any, Any], features: Sequence[str]
              ) -> tuple[dict[str, list[list[float]]], dict[str, float], float]:
    """MI, EMI, NMI and AMI matrices (features in order, id first), entropies, seconds."""
    started = time.perf_counter()
    k = len(features)
    out = {m: [[0.0] * k for _ in range(k)] for m in ("mi", "emi", "nmi", "ami")}
    hists = _count_histograms(stats)
    entropy = {f: _sums(stats[("h", f)]).entropy() if ("h", f) in stats else 0.0
               for f in features[1:]}
    h_id_all = []
    for i, f in enumerate(features):
        for j in range(i + 1, k):
            if i == 0:
                mi, emi, h_g, h_f = _id_pair(stats, hists, features[j])
                h_id_all.append(h_f)
            else:
                mi, emi, h_f, h_g = _pair(stats, hists, f, features[j])
            values = {"mi": mi, "emi": emi, "nmi": estimator.normalized(mi, h_f, h_g),
                      "ami": estimator.adjusted(mi, emi, h_f, h_g)}
            for m, value in values.items():
                out[m][i][j] = out[m][j][i] = value
    entropy[features[0]] = max(h_id_all, default=0.0)
    for i, f in enumerate(features):
        out["mi"][i][i] = out["emi"][i][i] = entropy[f]
        out["nmi"][i][i] = out["ami"][i][i] = 1.0 if entropy[f] > 0 else 0.0
    return out, entropy, time.perf_counter() - started


def assemble(stat_list: Sequence[tuple[Any, Any]], id_name: str, names: Sequence[str],
             n_masked: int, weighting: str, measure: str = "ami") -> dict[str, Any]:
    """Builds the artefact's JSON document from :func:`beam_mi.CorrelationSums` output.

    Args:
      stat_list: the tagged sums.
      id_name: the item id feature (first in every matrix).
      names: the other item features, in spec order.
      n_masked: CFM masked-set size, seed included.
      weighting: how items were counted (recorded).
      measure: the matrix that ranks and groups features, ``ami`` or ``nmi``.
    """
    if measure not in estimator.MEASURES:
        raise ValueError(f"measure must be one of {estimator.MEASURES}, got {measure!r}.")
    stats = dict(stat_list)
    features = [id_name, *names]
    k = len(features)
    matrices, entropy, seconds = _matrices(stats, features)
    chosen = matrices[measure]
    degenerate = {f: r for f in names if (r := _degenerate(stats, f))}
    ranking = {f: [features[j] for j in sorted((j for j in range(k) if j != i),
                                               key=lambda j, i=i: (-chosen[i][j], j))]
               for i, f in enumerate(features)}
    return {
        "features": features,
        "weighting": weighting,
        "measure": measure,
        "estimator": "plug-in MI in nats; multi-valued pairs weighted 1/(|A||B|); "
                     "NMI = MI / max(H_i, H_j); EMI = expected MI under random matching "
                     "(hypergeometric); AMI = (MI - EMI) / ((H_i + H_j) / 2 - EMI)",
        **matrices,
        "entropy": entropy,
        "support": {f: {"distinct_values": stats.get(("distinct", f)),
                        "hashed_into_buckets": stats.get(("hashed", f))} for f in names},
        "degenerate": degenerate,
        "ranking": ranking,
        "n_masked": n_masked,
        "groups": estimator.cfm_groups(features, chosen, n_masked),
        "timing": {"matrices_s": round(seconds, 3)},
    }


def describe_groups(doc: Mapping[str, Any]) -> list[str]:
    """The CFM groups in words, one line per seed feature."""
    measure = doc.get("measure", "nmi")
    lines = [f"grouped by {MEASURE_TITLES[measure]}"]
    for seed, group in doc["groups"].items():
        kept = [f for f in doc["features"] if f not in group]
        top = doc["ranking"][seed][0]
        i, j = doc["features"].index(seed), doc["features"].index(top)
        lines.append(f"seed {seed}: mask {{{', '.join(group)}}}, keep {{{', '.join(kept)}}} "
                     f"(closest: {top}, {measure.upper()} {doc[measure][i][j]:.2f})")
    for f, reason in doc["degenerate"].items():
        lines.append(f"note: feature {f} is degenerate ({reason}); its MI with others is 0")
    return lines


def write(doc: Mapping[str, Any], out_dir: str) -> None:
    """Writes ``correlation.json`` and the heat map of the grouping measure into ``out_dir``."""
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, JSON_FILE), "w") as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True))
    fig = heatmap(doc)
    with tf.io.gfile.GFile(os.path.join(out_dir, PNG_FILE), "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)


#: Title size in points, and a character's width as a share of it (generous,
#: so that wrapped lines fit whatever the font).
_TITLE_POINTS, _CHAR_EM = 11, 0.62


def heatmap(doc: Mapping[str, Any]) -> Any:
    """The heat map of ``doc``'s grouping measure, every label and its title inside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, measure = doc["features"], doc.get("measure", "nmi")
    matrix = doc[measure]
    width = max(4.0, 1.0 + 0.7 * len(names))
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.6 * len(names)))
    image = ax.imshow(matrix, vmin=min(0.0, min(map(min, matrix))), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i][j] < 0.6 else "black", fontsize=8)
    chars = int(0.9 * width * 72 / (_TITLE_POINTS * _CHAR_EM))
    title = (f"{MEASURE_TITLES[measure]} between item features "
             f"(groups CFM; {doc['weighting']} weighting)")
    fig.suptitle("\n".join(textwrap.wrap(title, chars)), fontsize=_TITLE_POINTS)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def read(uri: str) -> dict[str, Any]:
    """Reads ``correlation.json`` from an artefact folder."""
    with tf.io.gfile.GFile(os.path.join(uri, JSON_FILE)) as f:
        return json.loads(f.read())
