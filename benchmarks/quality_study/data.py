"""The study's data: the pipeline runs it reads, their joined splits, its own splits.

Every split folder is read with the product's reader
(:func:`components.tfrecords.split_dataset`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import yaml

from benchmarks.common import latest_artifact
from benchmarks.quality_study import protocol
from benchmarks.quality_study.scoring import Catalog, Evaluation
from components import tfrecords
from components.correlation import report as correlation_report
from pipeline import nodes
from transforms import features
from transforms.spec import load_spec

#: The training folder's name suffix: a new split rule writes a new folder.
SPLIT_NAME = "cold-validation"


def prepare(name: str) -> None:
    """Runs the CLI commands that produce dataset ``name``'s pipeline run, if missing."""
    dataset = protocol.DATASETS[name]
    if os.path.exists(os.path.join(dataset.root, "metadata.sqlite")):
        return
    if os.path.exists(dataset.spec) and not any(c[0] == "run" for c in dataset.commands):
        return                                   # a generated dataset the study runs no pipeline on
    if name in protocol.COLD_SOURCE and not os.path.exists(dataset.spec):
        prepare_cold_spec(protocol.COLD_SOURCE[name], dataset.spec)
    for command in dataset.commands:
        _pipeline(name, command)


def _pipeline(name: str, command: tuple[str, ...]) -> None:
    print(f"[quality] preparing {name}: python -m pipeline {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "pipeline", *command], check=True)


def prepare_cold_spec(source: str, target: str) -> None:
    """Dataset ``source``'s spec with ``COLD_ITEM_PERCENT`` of the items held out as cold."""
    source_spec = protocol.DATASETS[source].spec
    if not os.path.exists(source_spec):
        _pipeline(source, protocol.DATASETS[source].commands[0])
    with open(source_spec) as f:
        doc = yaml.safe_load(f)
    doc["name"] = doc["name"] + "-cold"
    doc.setdefault("split", {})["cold_item_percent"] = protocol.COLD_ITEM_PERCENT
    with open(target, "w") as f:
        f.write(f"# {os.path.basename(source_spec)} with {protocol.COLD_ITEM_PERCENT}% of the "
                "items held out as cold (written by benchmarks/quality.py).\n")
        yaml.safe_dump(doc, f, sort_keys=False)


def read_split(split_dir: str) -> np.ndarray:
    """The serialized records of one split folder, in file order (object array [N])."""
    batches = [b.numpy() for b in tfrecords.split_dataset(split_dir).batch(65536)]
    return np.concatenate(batches).astype(object)


def write_split(records: np.ndarray, folder: str) -> str:
    """Writes ``records`` as a GZIP TFRecord split folder unless it exists; returns it.

    Workers may race to write the same folder: each writes a private one and
    renames it, and the first rename wins.
    """
    if os.path.isdir(folder):
        return folder
    tmp = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tf.io.TFRecordWriter(os.path.join(tmp, "part-00000.gz"), "GZIP") as w:
        for r in records:
            w.write(r)
    try:
        os.rename(tmp, folder)
    except OSError:                                 # another worker finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def item_ids(records: np.ndarray, key: str) -> np.ndarray:
    """[N] the ``key`` bytes feature (an item id) of each serialized record (b"": none)."""
    spec = {key: tf.io.FixedLenFeature([], tf.string, default_value=b"")}
    parts = [tf.io.parse_example(tf.constant(list(records[i:i + 65536])), spec)[key].numpy()
             for i in range(0, len(records), 65536)]
    return np.concatenate(parts).astype(object) if parts else np.zeros(0, object)


class Split(NamedTuple):
    """The study's split of one regime's training rows.

    Attributes:
      train: the rows the models train on.
      validation: the validation rows scored (at most ``VALIDATION_MAX_PAIRS``).
      cold_items: the item ids whose every row left training for validation.
    """

    train: np.ndarray
    validation: np.ndarray
    cold_items: frozenset


def split_training(records: np.ndarray, share: float, item_key: str) -> Split:
    """``share`` of ``records``, then validation: cold items' rows and a share of the rest.

    The records are sorted first, so the seeded draws do not depend on the
    order the pipeline's workers wrote them in. Of the kept rows' items,
    ``VALIDATION_COLD_ITEM_PERCENT`` percent (uniform over items, as the
    pipeline's hash hold-out) leave training with every row; of the other
    rows ``VALIDATION_SHARE`` do. At most ``VALIDATION_MAX_PAIRS``
    validation rows, drawn uniformly, are scored.
    """
    records = np.sort(records)
    rng = np.random.default_rng(protocol.SPLIT_SEED)
    keep = np.ones(len(records), bool)
    if share < 1:
        keep[:] = False
        keep[rng.permutation(len(records))[: int(round(share * len(keep)))]] = True
    kept = records[keep]
    items = item_ids(kept, item_key)
    unique = np.unique(items)
    n_cold = int(round(protocol.VALIDATION_COLD_ITEM_PERCENT / 100 * len(unique)))
    cold = unique[rng.permutation(len(unique))[:n_cold]]
    is_val = np.isin(items, cold)
    warm = np.flatnonzero(~is_val)
    is_val[warm[rng.permutation(len(warm))[: int(round(protocol.VALIDATION_SHARE
                                                       * len(warm)))]]] = True
    validation = kept[is_val]
    if len(validation) > protocol.VALIDATION_MAX_PAIRS:
        validation = np.sort(validation[rng.permutation(len(validation))[
            : protocol.VALIDATION_MAX_PAIRS]])
    return Split(kept[~is_val], validation, frozenset(cold))


class Regime:
    """One regime's training folder and its validation and test evaluations.

    Attributes:
      name: the regime's name (a key of ``protocol.REGIMES``).
      spec: the dataset spec.
      transform_dir, catalog_dir, train_dir: the Transform graph, the joined
        catalog split, and the study's training split (written under ``work``).
      correlation: the FeatureCorrelation artefact's content.
      validation, test: the validation (its cold items' rows in the cold
        slice only) and test (the pipeline's eval split; the validation's cold
        items are cold there too) evaluations.
      sizes: pairs in ``train``, ``validation`` (scored) and ``test``, and the
        validation's cold items.
    """

    def __init__(self, name: str, regime: protocol.RegimeSpec, work: str) -> None:
        dataset = protocol.DATASETS[regime.dataset]
        self.name, self.spec = name, load_spec(dataset.spec)
        examples = latest_artifact(dataset.root, nodes.JOIN, "examples")
        self.transform_dir = latest_artifact(dataset.root, nodes.TRANSFORM, "transform_graph")
        self.catalog_dir = features.split_dir(examples, features.CATALOG_SPLIT)
        self.correlation = correlation_report.read(
            latest_artifact(dataset.root, nodes.CORRELATION, "correlation"))
        split = split_training(read_split(features.split_dir(examples, features.TRAIN_SPLIT)),
                               regime.share, features.item_key(self.spec.item_id))
        self.train_dir = write_split(split.train, os.path.join(work, f"{name}-train-{SPLIT_NAME}"))
        tft_out = tft.TFTransformOutput(self.transform_dir)
        catalog = Catalog(read_split(self.catalog_dir), tft_out, self.spec)
        self.validation = Evaluation(split.validation, catalog, tft_out, self.spec,
                                     cold_items=split.cold_items, warm_overall=True)
        # Validation's cold items never train: their test rows are cold too.
        self.test = Evaluation(read_split(features.split_dir(examples, features.EVAL_SPLIT)),
                               catalog, tft_out, self.spec, cold_items=split.cold_items)
        self.sizes = {"train": len(split.train), "validation": len(split.validation),
                      "validation_cold_items": len(split.cold_items),
                      "test": len(self.test.positive)}
