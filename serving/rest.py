"""TF Serving's REST API over a :class:`ModelManager`, for :mod:`serving.http`.

* ``GET  /v1/models/<name>[/versions/<n>]``: version status;
* ``GET  /v1/models/<name>[/versions/<n>]/metadata``: signature defs;
* ``POST /v1/models/<name>[/versions/<n>]:predict``: row (``instances``) or
  columnar (``inputs``) requests, run through the :class:`Batcher`.

A bad request gets ``400 {"error": ...}``, an unknown model or version 404,
a full batching queue 503.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import tensorflow as tf
from google.protobuf import json_format

from serving import codec
from serving.batching import Batcher, OverloadedError
from serving.http import Request
from serving.models import ModelManager, NotFoundError, Version

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?P<rest>/metadata|:predict)?$")


def _status(versions: list[int]) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in reversed(versions)]}


def _metadata(name: str, version: Version) -> dict[str, Any]:
    defs = {k: json_format.MessageToDict(v) for k, v in version.signature_defs.items()}
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version.number)},
            "metadata": {"signature_def": {"signature_def": defs}}}


class RestApi:
    """Routes requests; predictions go through the batcher."""

    def __init__(self, manager: ModelManager, batcher: Batcher, max_batch: int,
                 max_json_depth: int) -> None:
        self.manager, self.batcher = manager, batcher
        self.max_batch, self.max_json_depth = max_batch, max_json_depth

    def _version(self, match: re.Match) -> Version:
        number = match.group("version")
        return self.manager.get(match.group("name")).get(int(number) if number else None)

    def _get(self, match: re.Match) -> tuple[int, bytes]:
        if match.group("rest") == "/metadata":
            return 200, orjson.dumps(_metadata(match.group("name"), self._version(match)))
        if match.group("rest") == ":predict":
            return 405, codec.error_body("use POST for :predict")
        model = self.manager.get(match.group("name"))
        versions = [self._version(match).number] if match.group("version") else \
            model.versions()
        if not versions:
            raise NotFoundError(f"Servable not found for request: Latest({model.name})")
        return 200, orjson.dumps(_status(versions))

    async def _predict(self, match: re.Match, raw: bytes) -> tuple[int, bytes]:
        body = codec.loads(raw, self.max_json_depth)
        version = self._version(match)
        signature = body.get("signature_name", "") if isinstance(body, dict) else ""
        if not isinstance(signature, str):
            raise codec.BadRequestError("'signature_name' must be a string")
        fn = version.signature(signature)
        inputs, rows = codec.parse(body, fn.structured_input_signature[1], self.max_batch)
        outputs = await asyncio.wrap_future(self.batcher.submit(fn, version, inputs))
        return 200, codec.format_response(outputs, rows)

    async def __call__(self, request: Request) -> tuple[int, bytes]:
        """Answers one request: (status code, JSON body)."""
        match = _PATH.match(request.path.split("?", 1)[0])
        if not match:
            return 404, codec.error_body(f"Malformed request: {request.method} {request.path}")
        try:
            if request.method == "GET":
                return self._get(match)
            if request.method != "POST":
                return 405, codec.error_body(f"method {request.method} is not supported")
            if match.group("rest") != ":predict":
                return 405, codec.error_body("only :predict accepts POST")
            return await self._predict(match, request.body)
        except NotFoundError as e:
            return 404, codec.error_body(str(e))
        except OverloadedError as e:
            return 503, codec.error_body(str(e))
        except (codec.BadRequestError, KeyError) as e:
            return 400, codec.error_body(str(e).strip('"'))
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            return 400, codec.error_body(f"{type(e).__name__}: {e}".splitlines()[0])
