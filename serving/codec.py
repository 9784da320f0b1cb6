"""TF Serving's REST JSON <-> tensors, checked against the signature.

Requests: ``{"signature_name": ..., "instances": [...]}`` (row format: one
entry per example, a dict of named inputs or, for a one-input signature, the
bare value) or ``{"inputs": ...}`` (columnar: a dict of batch-major values,
or the bare value). Binary strings may be sent as ``{"b64": "..."}``.
String inputs of shape ``[N, None]`` may have rows of different lengths;
they are padded with ``""`` (which the project's signatures ignore).
Responses: ``{"predictions": [...]}`` for row requests, ``{"outputs": ...}``
for columnar ones, as TF Serving answers.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np
import tensorflow as tf


class BadRequestError(ValueError):
    """The request does not fit the signature (served as 400)."""


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise BadRequestError(f"expected {{\"b64\": ...}} for a binary value, got {value}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as e:
            raise BadRequestError(f"invalid base64 value: {e}") from e
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _string_rows(values: list, name: str) -> np.ndarray:
    rows = []
    for row in values:
        row = row if isinstance(row, list) else [row]
        if any(isinstance(v, list) for v in row):
            raise BadRequestError(f"input '{name}': expected a list of strings per example")
        rows.append([v if isinstance(v, bytes) else str(v).encode() for v in row])
    width = max([len(r) for r in rows] + [1])
    return np.array([r + [b""] * (width - len(r)) for r in rows], dtype=object)


def to_tensor(values: Any, spec: tf.TensorSpec, name: str) -> tf.Tensor:
    """One batch-major input as a tensor matching ``spec``."""
    values = _decode(values)
    if not isinstance(values, list):
        raise BadRequestError(f"input '{name}': expected a list with one entry per example")
    rank = spec.shape.rank
    try:
        if spec.dtype == tf.string and rank == 2:
            array = _string_rows(values, name)
        elif spec.dtype == tf.string:
            array = np.array([v if isinstance(v, bytes) else str(v).encode() for v in values],
                             dtype=object)
        else:
            array = np.asarray(values, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError) as e:
        raise BadRequestError(f"input '{name}': cannot convert to {spec.dtype.name}: {e}") from e
    if array.ndim != rank:
        raise BadRequestError(f"input '{name}': expected rank {rank} (shape "
                              f"{spec.shape.as_list()}), got shape {list(array.shape)}")
    return tf.constant(array, dtype=spec.dtype)


def parse(body: Any, specs: Mapping[str, tf.TensorSpec], max_batch: int
          ) -> tuple[dict[str, tf.Tensor], bool]:
    """Returns (named input tensors, whether the request used the row format)."""
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    names = sorted(specs)
    if "instances" in body and "inputs" in body:
        raise BadRequestError("request has both 'instances' and 'inputs'; send one")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequestError("'instances' must be a non-empty list")
        if len(instances) > max_batch:
            raise BadRequestError(f"batch of {len(instances)} exceeds the limit of {max_batch}")
        if all(isinstance(i, dict) and "b64" not in i for i in instances):
            columns = {n: [] for n in names}
            for k, instance in enumerate(instances):
                if set(instance) != set(names):
                    raise BadRequestError(f"instance {k}: expected inputs {names}, got "
                                          f"{sorted(instance)}")
                for n in names:
                    columns[n].append(instance[n])
        elif len(names) == 1:
            columns = {names[0]: instances}
        else:
            raise BadRequestError(f"signature has inputs {names}: each instance must be an "
                                  "object with these keys")
        return {n: to_tensor(columns[n], specs[n], n) for n in names}, True
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or "b64" in inputs:
            if len(names) != 1:
                raise BadRequestError(f"signature has inputs {names}: 'inputs' must be an object")
            inputs = {names[0]: inputs}
        if set(inputs) != set(names):
            raise BadRequestError(f"expected inputs {names}, got {sorted(inputs)}")
        tensors = {n: to_tensor(inputs[n], specs[n], n) for n in names}
        sizes = {int(t.shape[0]) for t in tensors.values()}
        if len(sizes) != 1:
            raise BadRequestError(f"inputs have different batch sizes {sorted(sizes)}")
        if sizes.pop() > max_batch:
            raise BadRequestError(f"batch exceeds the limit of {max_batch}")
        return tensors, False
    raise BadRequestError("missing 'instances' or 'inputs' in the request")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """TF Serving's response for ``outputs`` (numpy arrays, batch-major)."""
    names = sorted(outputs)
    if row_format:
        n = len(next(iter(outputs.values())))
        if len(names) == 1:
            return {"predictions": _jsonable(outputs[names[0]])}
        return {"predictions": [{k: _jsonable(outputs[k][i]) for k in names} for i in range(n)]}
    if len(names) == 1:
        return {"outputs": _jsonable(outputs[names[0]])}
    return {"outputs": {k: _jsonable(outputs[k]) for k in names}}
