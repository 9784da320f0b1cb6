"""Training curves read back from a Trainer's TensorBoard logs, drawn as PNG."""

from __future__ import annotations

import os

import tensorflow as tf

LOSSES = ("epoch_loss", "epoch_main_loss", "epoch_ssl_loss")
ACCURACIES = ("epoch_main_accuracy", "epoch_ssl_accuracy")


def scalars(model_run: str, split: str = "train") -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] sorted by step, from ``<model_run>/<split>/events*``.

    Keras writes epoch summaries as tensors; each is read with
    ``tf.compat.v1.train.summary_iterator``.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(model_run, split, "events*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                out.setdefault(value.tag, []).append((int(event.step), number))
    return {tag: sorted(points) for tag, points in out.items()}


def plot(model_run: str, title: str, png_path: str) -> bool:
    """Draws losses and contrastive accuracies of one Trainer; False if nothing was logged."""
    train = scalars(model_run)
    if not any(tag in train for tag in LOSSES + ACCURACIES):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validation = scalars(model_run, "validation")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for axes, tags, label in ((left, LOSSES, "loss"), (right, ACCURACIES, "accuracy")):
        for tag in tags:
            for points, style, suffix in ((train.get(tag), "-o", ""),
                                          (validation.get(tag), "--", " (validation)")):
                if points:
                    axes.plot([s + 1 for s, _ in points], [v for _, v in points], style,
                              markersize=3, label=tag.removeprefix("epoch_") + suffix)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        if axes.lines:
            axes.legend(fontsize=7)
    right.set_title("contrastive accuracy (in-batch top-1)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png_path), exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True
