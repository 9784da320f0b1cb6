"""gRPC ``tensorflow.serving.PredictionService``: Predict and GetModelMetadata.

The ``tensorflow-serving-api`` protos; Predict runs through the same
:class:`Batcher` as REST. A bad request is ``INVALID_ARGUMENT``, an unknown
model or version ``NOT_FOUND``, a full batching queue ``UNAVAILABLE``.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import codec
from serving import signatures as sig
from serving.batching import Batcher, OverloadedError
from serving.models import ModelManager, NotFoundError, Version


def _inputs(request: predict_pb2.PredictRequest, specs: dict[str, tf.TensorSpec],
            max_batch: int) -> dict[str, np.ndarray]:
    if set(request.inputs) != set(specs):
        raise codec.BadRequestError(f"expected inputs {sorted(specs)}, got "
                                    f"{sorted(request.inputs)}")
    out = {}
    for name, proto in request.inputs.items():
        want = specs[name].dtype.as_datatype_enum
        if proto.dtype != want:
            raise codec.BadRequestError(
                f"input '{name}': expected {tf.dtypes.as_dtype(want).name}, got "
                f"{tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else 'no dtype'}")
        array = tf.make_ndarray(proto)
        if not specs[name].shape.is_compatible_with(array.shape):
            raise codec.BadRequestError(f"input '{name}': expected shape "
                                        f"{specs[name].shape.as_list()}, got {list(array.shape)}")
        if array.ndim and len(array) > max_batch:
            raise codec.BadRequestError(f"batch of {len(array)} exceeds the limit of {max_batch}")
        out[name] = array
    return out


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """gRPC Predict and GetModelMetadata."""

    def __init__(self, manager: ModelManager, batcher: Batcher, max_batch: int) -> None:
        self.manager, self.batcher, self.max_batch = manager, batcher, max_batch

    def _version(self, spec: model_pb2.ModelSpec, context: grpc.ServicerContext) -> Version:
        try:
            number = spec.version.value if spec.HasField("version") else None
            return self.manager.get(spec.name).get(number)
        except NotFoundError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            raise

    def Predict(self, request: predict_pb2.PredictRequest,  # noqa: N802
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        """Runs a signature on TensorProto inputs."""
        version = self._version(request.model_spec, context)
        try:
            fn = version.signature(request.model_spec.signature_name)
            inputs = _inputs(request, fn.structured_input_signature[1], self.max_batch)
            outputs = self.batcher.submit(fn, version, inputs).result()
        except OverloadedError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except (codec.BadRequestError, KeyError, ValueError, TypeError,
                tf.errors.InvalidArgumentError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e).strip('"').splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.number
        response.model_spec.signature_name = request.model_spec.signature_name or \
            sig.SERVING_DEFAULT
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,  # noqa: N802
                         context: grpc.ServicerContext
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Signature defs of a version, as TF Serving returns them."""
        version = self._version(request.model_spec, context)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for k, v in version.signature_defs.items():
            signatures.signature_def[k].CopyFrom(v)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.number
        response.metadata["signature_def"].Pack(signatures)
        return response
