"""TF Serving's REST JSON <-> arrays, checked against the signature.

Requests: ``{"signature_name": ..., "instances": [...]}`` (row format: one
entry per example, a dict of named inputs or, for a one-input signature, the
bare value) or ``{"inputs": ...}`` (columnar: a dict of batch-major values,
or the bare value). Binary strings may be sent as ``{"b64": "..."}``.
String inputs of shape ``[N, None]`` may have rows of different lengths;
they are padded with ``""`` (which the project's signatures ignore). Values
must have the input's type: a number for a string input is refused, as TF
Serving refuses it.
Responses: ``{"predictions": [...]}`` for row requests, ``{"outputs": ...}``
for columnar ones, as TF Serving answers; errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np
import orjson
import tensorflow as tf

_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


class BadRequestError(ValueError):
    """The request does not fit the signature (served as 400)."""


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping once it exceeds ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                  else item))
    return deepest


def loads(body: bytes, max_depth: int) -> Any:
    """Parses a request body; JSON nested deeper than ``max_depth`` is refused.

    Brackets are counted on the raw bytes first (their number, then, if
    that is over the cap, the running depth, vectorized); only a body whose
    count exceeds the cap (brackets inside strings count there) is measured
    exactly once parsed. The parser itself is not recursive in
    Python, so no body can exhaust the interpreter's stack.
    """
    bound = body.count(b"[") + body.count(b"{")
    if bound > max_depth:
        raw = np.frombuffer(body, np.uint8)
        steps = np.isin(raw, _OPEN).astype(np.int32) - np.isin(raw, _CLOSE)
        bound = int(np.cumsum(steps).max())
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if bound > max_depth:
            raise BadRequestError(f"JSON nesting deeper than the limit of {max_depth}") from e
        raise BadRequestError(f"invalid JSON: {e}") from e
    if bound > max_depth and _depth(value, max_depth) > max_depth:
        raise BadRequestError(f"JSON nesting deeper than the limit of {max_depth}")
    return value


def _decode(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as e:
            raise BadRequestError(f"input '{name}': invalid base64 value: {e}") from e
    raise BadRequestError(f"input '{name}': expected a string (or {{\"b64\": ...}}), got "
                          f"{type(value).__name__} {str(value)[:40]}")


def _string_rows(values: list, name: str) -> np.ndarray:
    rows = []
    for row in values:
        row = row if isinstance(row, list) else [row]
        rows.append([_decode(v, name) for v in row])
    width = max([len(r) for r in rows] + [1])
    return np.array([r + [b""] * (width - len(r)) for r in rows], dtype=object)


def _numbers(values: list, spec: tf.TensorSpec, name: str) -> np.ndarray:
    flat, stack = [], [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            flat.append(item)
    want = bool if spec.dtype == tf.bool else (int, float)
    if any(isinstance(v, bool) != (want is bool) or not isinstance(v, want) for v in flat):
        raise BadRequestError(f"input '{name}': expected {spec.dtype.name} values, got "
                              f"{sorted({type(v).__name__ for v in flat})}")
    try:
        return np.asarray(values, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadRequestError(f"input '{name}': cannot convert to {spec.dtype.name}: {e}") from e


def to_array(values: Any, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """One batch-major input as an array of ``spec``'s dtype and rank."""
    if not isinstance(values, list) or not values:
        raise BadRequestError(f"input '{name}': expected a non-empty list with one entry per "
                              "example")
    rank = spec.shape.rank
    try:
        if spec.dtype == tf.string and rank == 2:
            array = _string_rows(values, name)
        elif spec.dtype == tf.string:
            array = np.array([_decode(v, name) for v in values], dtype=object)
        else:
            array = _numbers(values, spec, name)
    except ValueError as e:
        if isinstance(e, BadRequestError):
            raise
        raise BadRequestError(f"input '{name}': ragged or malformed values: {e}") from e
    if array.ndim != rank:
        raise BadRequestError(f"input '{name}': expected rank {rank} (shape "
                              f"{spec.shape.as_list()}), got shape {list(array.shape)}")
    return array


def _columns(instances: Any, names: list[str], max_batch: int) -> dict[str, list]:
    if not isinstance(instances, list) or not instances:
        raise BadRequestError("'instances' must be a non-empty list")
    if len(instances) > max_batch:
        raise BadRequestError(f"batch of {len(instances)} exceeds the limit of {max_batch}")
    if all(isinstance(i, dict) and "b64" not in i for i in instances):
        columns: dict[str, list] = {n: [] for n in names}
        for k, instance in enumerate(instances):
            if set(instance) != set(names):
                raise BadRequestError(f"instance {k}: expected inputs {names}, got "
                                      f"{sorted(instance)}")
            for n in names:
                columns[n].append(instance[n])
        return columns
    if len(names) == 1:
        return {names[0]: instances}
    raise BadRequestError(f"signature has inputs {names}: each instance must be an object "
                          "with these keys")


def parse(body: Any, specs: Mapping[str, tf.TensorSpec], max_batch: int
          ) -> tuple[dict[str, np.ndarray], bool]:
    """Returns (named input arrays, whether the request used the row format)."""
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    names = sorted(specs)
    if "instances" in body and "inputs" in body:
        raise BadRequestError("request has both 'instances' and 'inputs'; send one")
    if "instances" in body:
        columns = _columns(body["instances"], names, max_batch)
        return {n: to_array(columns[n], specs[n], n) for n in names}, True
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or "b64" in inputs:
            if len(names) != 1:
                raise BadRequestError(f"signature has inputs {names}: 'inputs' must be an object")
            inputs = {names[0]: inputs}
        if set(inputs) != set(names):
            raise BadRequestError(f"expected inputs {names}, got {sorted(inputs)}")
        arrays = {n: to_array(inputs[n], specs[n], n) for n in names}
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise BadRequestError(f"inputs have different batch sizes {sorted(sizes)}")
        if sizes.pop() > max_batch:
            raise BadRequestError(f"batch exceeds the limit of {max_batch}")
        return arrays, False
    raise BadRequestError("missing 'instances' or 'inputs' in the request")


def _text(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def _jsonable(value: np.ndarray) -> Any:
    """Numeric arrays go to orjson as they are; byte strings become text."""
    if value.dtype != object:
        return np.ascontiguousarray(value)
    if value.ndim == 0:
        return _text(value.item())
    if value.ndim == 1:
        return [_text(v) for v in value.tolist()]
    return [_jsonable(v) for v in value]


def format_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """TF Serving's response body for ``outputs`` (numpy arrays, batch-major)."""
    names = sorted(outputs)
    if row_format:
        n = len(next(iter(outputs.values())))
        if len(names) == 1:
            payload: Any = {"predictions": _jsonable(outputs[names[0]])}
        else:
            columns = {k: _jsonable(outputs[k]) for k in names}
            payload = {"predictions": [{k: columns[k][i] for k in names} for i in range(n)]}
    elif len(names) == 1:
        payload = {"outputs": _jsonable(outputs[names[0]])}
    else:
        payload = {"outputs": {k: _jsonable(outputs[k]) for k in names}}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(message: str) -> bytes:
    """TF Serving's error body."""
    return orjson.dumps({"error": message})
