"""The dataset contract: a small YAML file describing logs and catalog.

A user brings their own data by writing one of these files; no code. Example::

    name: my-shop
    catalog:
      path: catalog            # folder, relative to this file
      pattern: "*.csv"         # files inside it
      id: item_id              # the item id column (counts as a feature)
      features:
        - {name: category}
        - {name: tags, multivalued: true, separator: "|"}
    logs:
      path: logs
      pattern: "span-{SPAN}/*.csv"   # {SPAN} folders are ingested incrementally
      query_item: seed_item_id       # column holding the query (seed) item
      item: item_id                  # column holding the engaged item
      context_features: []           # log columns fed to the query tower
      train_spans: 1                 # latest spans in the training window
    split: {eval_percent: 10, key: user_id}
    vocabulary: {frequency_threshold: 1, num_oov_buckets: 1}
    on_bad_input: {malformed_row: reject, unknown_item: reject,
                   duplicate_item: error}

Every file is CSV with a header row, UTF-8 unless ``encoding`` says otherwise,
one record per line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

import yaml

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_BAD_INPUT_POLICIES = {
    "malformed_row": ("reject", "error"),
    "unknown_item": ("reject", "error"),
    "duplicate_item": ("error", "keep_first"),
}


class SpecError(ValueError):
    """The dataset spec is invalid; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class Feature:
    """One categorical feature.

    Attributes:
      name: column name in the source CSV and base of the feature keys.
      multivalued: whether the cell holds a list of values.
      separator: separator between values of a multi-valued cell.
      frequency_threshold: values seen fewer times go to the OOV bucket.
      top_k: keep only the k most frequent values (None: keep all).
    """

    name: str
    multivalued: bool = False
    separator: str = "|"
    frequency_threshold: int = 1
    top_k: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TableSource:
    """Where a table's CSV files are.

    Attributes:
      base: absolute folder holding the files.
      pattern: glob relative to ``base``; may contain ``{SPAN}``.
      encoding: text encoding of the files.
    """

    base: str
    pattern: str
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset contract. Build it with :func:`load_spec`.

    Attributes:
      name: dataset name, used in run folders.
      catalog: the item catalog's files.
      item_id: catalog column with the item id; it is the first item feature.
      item_features: every item feature, the id first.
      logs: the interaction logs' files.
      query_item_column: log column with the query (seed) item id.
      item_column: log column with the engaged (positive) item id.
      context_features: log columns fed to the query tower only.
      query_item_features: names of item features the query tower sees.
      train_spans: number of latest log spans in the training window.
      eval_percent: share of log rows (by hash of ``split_key``) held out.
      split_key: log column hashed for the split (rows sharing it stay
        together), or None to hash the whole row.
      cold_item_percent: share of catalog items (by SHA-256 of the item id)
        held out of training: every training log row whose query or engaged
        item is one of them moves to eval, so those items are cold (never
        seen in training) and the cold slice gets their pairs. 0 (default)
        holds none out.
      num_oov_buckets: OOV buckets per vocabulary.
      malformed_row: ``reject`` (count and report) or ``error``.
      unknown_item: ``reject`` or ``error`` for log items absent from the
        catalog.
      duplicate_item: ``error`` or ``keep_first`` for repeated catalog ids.
      head_fraction: share of training-seen items that form the head slice.
      logs_schema: curated schema file for the logs (None: inferred).
      catalog_schema: curated schema file for the catalog (None: inferred).
    """

    name: str
    catalog: TableSource
    item_id: str
    item_features: tuple[Feature, ...]
    logs: TableSource
    query_item_column: str
    item_column: str
    context_features: tuple[Feature, ...] = ()
    query_item_features: tuple[str, ...] = ()
    train_spans: int = 1
    eval_percent: int = 10
    split_key: Optional[str] = None
    cold_item_percent: int = 0
    num_oov_buckets: int = 1
    malformed_row: str = "reject"
    unknown_item: str = "reject"
    duplicate_item: str = "error"
    head_fraction: float = 0.1
    logs_schema: Optional[str] = None
    catalog_schema: Optional[str] = None

    @property
    def has_spans(self) -> bool:
        """Whether the logs are organised in ``span-{SPAN}`` folders."""
        return "{SPAN}" in self.logs.pattern

    def item_feature(self, name: str) -> Feature:
        """Returns the item feature called ``name``."""
        for feature in self.item_features:
            if feature.name == name:
                return feature
        raise KeyError(f"no item feature {name!r}; have {[f.name for f in self.item_features]}")

    def log_columns(self) -> tuple[str, ...]:
        """Log columns the pipeline reads (others are ignored)."""
        cols = [self.query_item_column, self.item_column]
        cols += [f.name for f in self.context_features]
        if self.split_key and self.split_key not in cols:
            cols.append(self.split_key)
        return tuple(cols)

    def catalog_columns(self) -> tuple[str, ...]:
        """Catalog columns the pipeline reads (others are ignored)."""
        return tuple(f.name for f in self.item_features)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form; :func:`spec_from_dict` inverts it."""
        return dataclasses.asdict(self)


#: The execution property / custom_config key that ships a spec to executors.
SPEC_PARAMETER = "dataset_spec"


def spec_to_json(spec: DatasetSpec) -> str:
    """The spec as the JSON string of an execution property (sorted keys)."""
    return json.dumps(spec.to_dict(), sort_keys=True)


def spec_from_json(text: str) -> DatasetSpec:
    """Inverts :func:`spec_to_json`."""
    return spec_from_dict(json.loads(text))


def spec_from_dict(data: Mapping[str, Any]) -> DatasetSpec:
    """Inverts :meth:`DatasetSpec.to_dict` (used to ship specs to executors)."""
    fields = dict(data)
    fields["catalog"] = TableSource(**fields["catalog"])
    fields["logs"] = TableSource(**fields["logs"])
    for key in ("item_features", "context_features"):
        fields[key] = tuple(Feature(**f) for f in fields[key])
    fields["query_item_features"] = tuple(fields["query_item_features"])
    return DatasetSpec(**fields)


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] in (None, ""):
        raise SpecError(f"{where}: missing required key '{key}'. Add it to the spec.")
    return mapping[key]


def _check_keys(mapping: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    if not isinstance(mapping, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {type(mapping).__name__}.")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}."
        )


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(
            f"{where}: column name {name!r} must start with a letter and contain only "
            "letters, digits and '_' (rename the column in the CSV header)."
        )
    return name


def _feature(raw: Any, where: str, vocab_defaults: Mapping[str, Any]) -> Feature:
    if isinstance(raw, str):
        raw = {"name": raw}
    _check_keys(raw, ("name", "multivalued", "separator", "frequency_threshold", "top_k"), where)
    name = _check_name(_require(raw, "name", where), where)
    multivalued = bool(raw.get("multivalued", False))
    separator = raw.get("separator", "|")
    if multivalued and (not isinstance(separator, str) or not separator or separator == ","):
        raise SpecError(
            f"{where}: feature '{name}' needs a non-empty separator other than ',' "
            f"(the CSV delimiter); got {separator!r}."
        )
    threshold = raw.get("frequency_threshold", vocab_defaults.get("frequency_threshold", 1))
    if not isinstance(threshold, int) or threshold < 1:
        raise SpecError(f"{where}: feature '{name}': frequency_threshold must be an int >= 1, "
                        f"got {threshold!r}.")
    top_k = raw.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise SpecError(f"{where}: feature '{name}': top_k must be an int >= 1, got {top_k!r}.")
    return Feature(name, multivalued, separator, threshold, top_k)


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL of a remote file system (``gs://``, ``s3://``...)."""
    return "://" in path


def _resolve(path: str, root: str) -> str:
    """Absolute local path, or a URL (``gs://``, ``s3://``...) unchanged."""
    if is_url(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(root, path))


def _source(raw: Mapping[str, Any], where: str, root: str) -> TableSource:
    base = _resolve(str(_require(raw, "path", where)), root)
    pattern = str(raw.get("pattern", "*.csv"))
    if "{SPAN}" in pattern and not pattern.startswith("span-{SPAN}/"):
        raise SpecError(
            f"{where}: pattern {pattern!r}: spans must be folders named 'span-{{SPAN}}/', "
            "e.g. pattern: \"span-{SPAN}/*.csv\"."
        )
    return TableSource(base=base, pattern=pattern, encoding=str(raw.get("encoding", "utf-8")))


def _schema_path(path: Optional[str], root: str) -> Optional[str]:
    if path is None:
        return None
    full = _resolve(path, root)
    if not is_url(full) and not os.path.isfile(full):
        raise SpecError(f"schemas: schema file {full!r} does not exist; write it (e.g. copy "
                        "SchemaGen's schema.pbtxt from a run) or remove the key.")
    return full


def _policies(raw: Mapping[str, Any]) -> dict[str, str]:
    _check_keys(raw, tuple(_BAD_INPUT_POLICIES), "on_bad_input")
    out = {}
    for key, allowed in _BAD_INPUT_POLICIES.items():
        value = raw.get(key, allowed[0])
        if value not in allowed:
            raise SpecError(
                f"on_bad_input.{key}: got {value!r}; allowed values are {list(allowed)}.")
        out[key] = value
    return out


def parse_spec(data: Mapping[str, Any], root: str) -> DatasetSpec:
    """Validates a spec mapping; relative paths resolve against ``root``.

    Raises:
      SpecError: naming the offending key and how to fix it.
    """
    _check_keys(data, ("name", "catalog", "logs", "split", "query", "vocabulary",
                       "on_bad_input", "head_fraction", "schemas"), "spec")
    vocab = data.get("vocabulary", {}) or {}
    _check_keys(vocab, ("frequency_threshold", "num_oov_buckets"), "vocabulary")
    catalog = _require(data, "catalog", "spec")
    _check_keys(catalog, ("path", "pattern", "encoding", "id", "features"), "catalog")
    item_id = _check_name(_require(catalog, "id", "catalog"), "catalog.id")
    features = [Feature(item_id, frequency_threshold=1)]
    for i, raw in enumerate(catalog.get("features", []) or []):
        features.append(_feature(raw, f"catalog.features[{i}]", vocab))
    logs = _require(data, "logs", "spec")
    _check_keys(logs, ("path", "pattern", "encoding", "query_item", "item",
                       "context_features", "train_spans"), "logs")
    context = tuple(_feature(raw, f"logs.context_features[{i}]", vocab)
                    for i, raw in enumerate(logs.get("context_features", []) or []))
    split = data.get("split", {}) or {}
    _check_keys(split, ("eval_percent", "key", "cold_item_percent"), "split")
    query = data.get("query", {}) or {}
    _check_keys(query, ("item_features",), "query")
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise SpecError(f"catalog: feature names must be unique (the id counts); got {names}.")
    query_feats = tuple(query.get("item_features", names))
    missing = sorted(set(query_feats) - set(names))
    if missing:
        raise SpecError(f"query.item_features: {missing} are not catalog features {names}.")
    schemas = data.get("schemas", {}) or {}
    _check_keys(schemas, ("logs", "catalog"), "schemas")
    schema_paths = {k: _schema_path(schemas.get(k), root) for k in ("logs", "catalog")}
    spec = DatasetSpec(
        name=_check_name(str(_require(data, "name", "spec")).replace("-", "_"), "name"),
        catalog=_source(catalog, "catalog", root),
        item_id=item_id,
        item_features=tuple(features),
        logs=_source(logs, "logs", root),
        query_item_column=_check_name(_require(logs, "query_item", "logs"), "logs.query_item"),
        item_column=_check_name(_require(logs, "item", "logs"), "logs.item"),
        context_features=context,
        query_item_features=query_feats,
        train_spans=int(logs.get("train_spans", 1)),
        eval_percent=int(split.get("eval_percent", 10)),
        split_key=split.get("key"),
        cold_item_percent=int(split.get("cold_item_percent", 0)),
        num_oov_buckets=int(vocab.get("num_oov_buckets", 1)),
        head_fraction=float(data.get("head_fraction", 0.1)),
        logs_schema=schema_paths["logs"],
        catalog_schema=schema_paths["catalog"],
        **_policies(data.get("on_bad_input", {}) or {}),
    )
    _check_ranges(spec)
    return spec


def _check_ranges(spec: DatasetSpec) -> None:
    if not 1 <= spec.eval_percent <= 50:
        raise SpecError(f"split.eval_percent must be in [1, 50], got {spec.eval_percent}.")
    if not 0 <= spec.cold_item_percent <= 50:
        raise SpecError("split.cold_item_percent must be in [0, 50], got "
                        f"{spec.cold_item_percent}.")
    if spec.train_spans < 1:
        raise SpecError(f"logs.train_spans must be >= 1, got {spec.train_spans}.")
    if spec.num_oov_buckets < 1:
        raise SpecError(f"vocabulary.num_oov_buckets must be >= 1, got {spec.num_oov_buckets}.")
    if not 0.0 < spec.head_fraction < 1.0:
        raise SpecError(f"head_fraction must be in (0, 1), got {spec.head_fraction}.")
    if spec.split_key is not None:
        _check_name(spec.split_key, "split.key")
    if spec.query_item_column == spec.item_column:
        raise SpecError("logs.query_item and logs.item must be different columns.")


def load_spec(path: str) -> DatasetSpec:
    """Reads and validates a YAML spec file.

    Raises:
      SpecError: the file is missing, not YAML, or invalid.
    """
    if not os.path.isfile(path):
        raise SpecError(f"dataset spec {path!r} does not exist; pass the path of a YAML spec file.")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise SpecError(f"dataset spec {path!r} is not valid YAML: {e}") from e
    try:
        return parse_spec(data or {}, os.path.dirname(os.path.abspath(path)))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from e
