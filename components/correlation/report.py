"""Assembles the correlation statistics into the artefact's files.

``correlation.json`` holds, for the features in spec order (id first): the MI
and NMI matrices (diagonal: each feature's entropy and 1), entropies,
support counts, which features were hashed, degenerate features, and for
each seed feature the others ranked by NMI plus the default CFM group.
``nmi_heatmap.png`` draws the NMI matrix.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from components.correlation import estimator

JSON_FILE = "correlation.json"
PNG_FILE = "nmi_heatmap.png"


def _sums(value: tuple[float, float, int]) -> estimator.TableSums:
    return estimator.TableSums(value[0], value[1])


def _id_pair(stats: Mapping[Any, Any], f: str) -> tuple[float, float, float]:
    """``(MI(id, f), H(f), H(id | f non-empty))`` from per-feature sums."""
    w = stats.get(("w", f), 0.0)
    if w <= 0:
        return 0.0, 0.0, 0.0
    h_f = _sums(stats[("h", f)]).entropy()
    h_id = max(0.0, math.log(w) - stats[("wlogw", f)] / w)
    mi = min(max(h_f - stats[("wlogn", f)] / w, 0.0), h_f, h_id)
    return mi, h_f, h_id


def _pair(stats: Mapping[Any, Any], f: str, g: str) -> tuple[float, float, float]:
    key = (f, g) if f < g else (g, f)
    if ("joint", key) not in stats:
        return 0.0, 0.0, 0.0
    left, right = _sums(stats[("left", key)]), _sums(stats[("right", key)])
    mi = estimator.mutual_information(_sums(stats[("joint", key)]), left, right)
    h_f, h_g = (left.entropy(), right.entropy()) if f < g else (right.entropy(), left.entropy())
    return mi, h_f, h_g


def _degenerate(stats: Mapping[Any, Any], f: str) -> Optional[str]:
    distinct = stats.get(("distinct", f), 0)
    if distinct == 0:
        return "no catalog item has a value"
    if distinct == 1:
        return "a single value in the whole catalog (entropy 0)"
    return None


def assemble(stat_list: Sequence[tuple[Any, Any]], id_name: str, names: Sequence[str],
             n_masked: int, weighting: str) -> dict[str, Any]:
    """Builds the artefact's JSON document from :func:`beam_mi.CorrelationSums` output."""
    stats = dict(stat_list)
    features = [id_name, *names]
    k = len(features)
    mi = [[0.0] * k for _ in range(k)]
    nmi = [[0.0] * k for _ in range(k)]
    entropy = {f: _sums(stats[("h", f)]).entropy() if ("h", f) in stats else 0.0 for f in names}
    h_id_all = []
    for i, f in enumerate(features):
        for j in range(i + 1, k):
            g = features[j]
            if i == 0:
                value, h_g, h_f = _id_pair(stats, g)
                h_id_all.append(h_f)
            else:
                value, h_f, h_g = _pair(stats, f, g)
            mi[i][j] = mi[j][i] = value
            nmi[i][j] = nmi[j][i] = estimator.normalized(value, h_f, h_g)
    entropy[id_name] = max(h_id_all, default=0.0)
    for i, f in enumerate(features):
        mi[i][i] = entropy[f]
        nmi[i][i] = 1.0 if entropy[f] > 0 else 0.0
    degenerate = {f: r for f in names if (r := _degenerate(stats, f))}
    ranking = {f: [features[j] for j in sorted((j for j in range(k) if j != i),
                                               key=lambda j, i=i: (-nmi[i][j], j))]
               for i, f in enumerate(features)}
    return {
        "features": features,
        "weighting": weighting,
        "estimator": "plug-in MI in nats; multi-valued pairs weighted 1/(|A||B|); "
                     "NMI = MI / max(H_i, H_j)",
        "mi": mi,
        "nmi": nmi,
        "entropy": entropy,
        "support": {f: {"distinct_values": stats.get(("distinct", f)),
                        "hashed_into_buckets": stats.get(("hashed", f))} for f in names},
        "degenerate": degenerate,
        "ranking": ranking,
        "n_masked": n_masked,
        "groups": estimator.cfm_groups(features, nmi, n_masked),
    }


def describe_groups(doc: Mapping[str, Any]) -> list[str]:
    """The CFM groups in words, one line per seed feature."""
    lines = []
    for seed, group in doc["groups"].items():
        kept = [f for f in doc["features"] if f not in group]
        top = doc["ranking"][seed][0]
        i, j = doc["features"].index(seed), doc["features"].index(top)
        lines.append(f"seed {seed}: mask {{{', '.join(group)}}}, keep {{{', '.join(kept)}}} "
                     f"(closest: {top}, NMI {doc['nmi'][i][j]:.2f})")
    for f, reason in doc["degenerate"].items():
        lines.append(f"note: feature {f} is degenerate ({reason}); its MI with others is 0")
    return lines


def write(doc: Mapping[str, Any], out_dir: str) -> None:
    """Writes ``correlation.json`` and ``nmi_heatmap.png`` into ``out_dir``."""
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, JSON_FILE), "w") as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = doc["features"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.6 * len(names)))
    image = ax.imshow(doc["nmi"], vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{doc['nmi'][i][j]:.2f}", ha="center", va="center",
                    color="white" if doc["nmi"][i][j] < 0.6 else "black", fontsize=8)
    ax.set_title(f"Normalized MI between item features ({doc['weighting']} weighting)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    local = os.path.join(out_dir, PNG_FILE)
    with tf.io.gfile.GFile(local, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def read(uri: str) -> dict[str, Any]:
    """Reads ``correlation.json`` from an artefact folder."""
    with tf.io.gfile.GFile(os.path.join(uri, JSON_FILE)) as f:
        return json.loads(f.read())
