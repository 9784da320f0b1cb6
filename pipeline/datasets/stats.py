"""How long-tailed a dataset is: the two statistics the quality study reports.

* **Share of feature values held by at most 3 items** (over every value of
  every item feature, id excluded; a multi-valued cell counts each value).
* **Share of catalog items with at most 5 training pairs** (engaged-item
  side of the log pairs; items never engaged count, with 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

RARE_VALUE_ITEMS = 3
SPARSE_ITEM_PAIRS = 5


def long_tail(items: pd.DataFrame, pairs: pd.Series, item_id: str,
              features: Sequence[str], separators: dict[str, str]) -> dict[str, float]:
    """``values_on_le3_items_share`` and ``items_le5_pairs_share`` of a dataset.

    Args:
      items: the catalog, one row per item, features as strings.
      pairs: the engaged item id of each training pair.
      item_id: the catalog's id column.
      features: the item features to count values of (not the id).
      separators: separator of each multi-valued feature.
    """
    sizes = []
    for name in features:
        column = items[name].fillna("").astype(str)
        if name in separators:
            column = column.str.split(separators[name]).explode()
        counts = column[column != ""].value_counts()
        sizes.append(counts.to_numpy())
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    per_item = pairs.value_counts().reindex(items[item_id], fill_value=0).to_numpy()
    return {
        f"values_on_le{RARE_VALUE_ITEMS}_items_share": float(np.mean(sizes <= RARE_VALUE_ITEMS)),
        f"items_le{SPARSE_ITEM_PAIRS}_pairs_share": float(np.mean(per_item <= SPARSE_ITEM_PAIRS)),
    }


def of_spec(spec_path: str) -> dict[str, float]:
    """:func:`long_tail` of a written dataset: its catalog and the pairs of its latest span.

    Every logged pair counts as a training pair (the eval split is a hash
    share of them, so the shares differ little).
    """
    from pipeline import preflight
    from transforms import tables
    from transforms.spec import load_spec

    spec = load_spec(spec_path)
    files = preflight.check(spec)

    def read(kind: str, columns: list[str], encoding: str) -> pd.DataFrame:
        return pd.concat([pd.read_csv(path, dtype=str, usecols=columns, encoding=encoding,
                                      keep_default_na=False) for path in files[kind]])

    names = [f.name for f in spec.item_features if f.name != spec.item_id]
    items = read(tables.CATALOG, [spec.item_id, *names], spec.catalog.encoding)
    pairs = read(tables.LOGS, [spec.item_column], spec.logs.encoding)[spec.item_column]
    separators = {f.name: f.separator for f in spec.item_features if f.multivalued}
    return long_tail(items, pairs, spec.item_id, names, separators)


def describe(values: dict[str, float]) -> str:
    """One line: the two shares, in percent."""
    return (f"feature values on <= {RARE_VALUE_ITEMS} items: "
            f"{values[f'values_on_le{RARE_VALUE_ITEMS}_items_share']:.1%}; items with <= "
            f"{SPARSE_ITEM_PAIRS} pairs: {values[f'items_le{SPARSE_ITEM_PAIRS}_pairs_share']:.1%}")
