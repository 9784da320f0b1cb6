"""Every feature key of the joined examples, written once.

The join step writes one Examples artefact with splits ``train``, ``eval`` and
``catalog``. Log rows carry ``query_<f>`` (the seed item's features),
``context_<f>`` (log context columns) and ``item_<f>`` (the engaged item);
catalog rows carry ``item_<f>`` only. Every row carries the engaged item's
training frequency and its head/tail/cold bucket. Transform keeps these keys.
"""

from __future__ import annotations

import os

TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
CATALOG_SPLIT = "catalog"
LOG_SPLITS = (TRAIN_SPLIT, EVAL_SPLIT)
JOINED_SPLITS = (*LOG_SPLITS, CATALOG_SPLIT)

ITEM_TRAIN_COUNT = "item_train_count"
ITEM_BUCKET = "item_bucket"
IS_CATALOG_ROW = "is_catalog_row"

HEAD, TAIL, COLD = "head", "tail", "cold"
BUCKETS = (HEAD, TAIL, COLD)


def split_dir(examples_uri: str, split: str) -> str:
    """The folder of ``split`` inside an Examples artefact (TFX's ``Split-<name>`` layout)."""
    return os.path.join(examples_uri, f"Split-{split}")


def query_key(name: str) -> str:
    """Key of the seed (query) item's feature ``name``."""
    return f"query_{name}"


def item_key(name: str) -> str:
    """Key of the candidate item's feature ``name``."""
    return f"item_{name}"


def context_key(name: str) -> str:
    """Key of the log context feature ``name`` (query tower only)."""
    return f"context_{name}"


def vocabulary_name(name: str) -> str:
    """File name of the shared vocabulary of item feature ``name``."""
    return f"vocab_item_{name}"


def context_vocabulary_name(name: str) -> str:
    """File name of the vocabulary of context feature ``name``."""
    return f"vocab_context_{name}"
