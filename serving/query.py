"""Command-line client: recommendations for a catalog item, with titles.

``python -m serving.query --dataset data/movielens-1m/dataset.yaml --item 1``
looks the item up in the dataset's catalog, sends its features to the
endpoint's REST ``:predict`` (TF Serving's API) and prints the top items with
their catalog features.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

from serving import signatures as sig
from transforms import features
from transforms.spec import DatasetSpec, load_spec


def catalog_rows(spec: DatasetSpec) -> dict[str, dict[str, str]]:
    """Every catalog row by item id (local catalogs)."""
    rows: dict[str, dict[str, str]] = {}
    for path in sorted(glob.glob(os.path.join(spec.catalog.base, spec.catalog.pattern))):
        with open(path, newline="", encoding=spec.catalog.encoding) as f:
            for row in csv.DictReader(f):
                rows.setdefault(row[spec.item_id].strip(), row)
    return rows


def instance(spec: DatasetSpec, row: dict[str, str], context: dict[str, str]) -> dict:
    """The query features of a seed item (and context values) as one REST instance."""
    out = {}
    for name in spec.query_item_features:
        feature = spec.item_feature(name)
        cell = row.get(name, "").strip()
        values = [v.strip() for v in cell.split(feature.separator)] if feature.multivalued \
            else [cell]
        out[features.query_key(name)] = [v for v in values if v] or [""]
    for f in spec.context_features:
        out[features.context_key(f.name)] = [context.get(f.name, "")]
    return out


def predict(url: str, model: str, body: dict, timeout: float = 30.0) -> dict:
    """POSTs a :predict request; raises RuntimeError with the server's message."""
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/models/{model}:predict",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{e.code}: {json.loads(e.read()).get('error')}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Prints the recommendations; exit 2 on an unknown item or a server error."""
    parser = argparse.ArgumentParser(prog="python -m serving.query", description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--item", required=True, help="seed item id")
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--model", default="ssl4rec")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--context", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    spec = load_spec(args.dataset)
    rows = catalog_rows(spec)
    if args.item not in rows:
        print(f"error: item {args.item!r} is not in the catalog", file=sys.stderr)
        return 2
    context = dict(c.split("=", 1) for c in args.context)
    try:
        answer = predict(args.url, args.model,
                         {"instances": [instance(spec, rows[args.item], context)]})
    except (RuntimeError, urllib.error.URLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    top = answer["predictions"][0]
    describe = lambda r: " | ".join(  # noqa: E731
        f"{k}={v}" for k, v in r.items() if k != spec.item_id and k in spec.catalog_columns())
    print(f"seed {args.item}: {describe(rows[args.item])}")
    for rank, (item, score) in enumerate(zip(top[sig.ITEM_IDS][:args.k], top[sig.SCORES]), 1):
        print(f"{rank:3d}. {item:>10}  {score:.3f}  {describe(rows.get(item, {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
