"""The stock Pusher with a version that every export of one blessed model shares.

TFX's Pusher names the serving version after the clock when it runs
(``int(time.time())``), so the three Pushers of one run (ScaNN, brute-force
and query-tower exports) could push one model under two or three version
numbers, and a client pinning a version would get different models. Here the
version is the creation time, in whole seconds, of the ``ModelBlessing`` the
three Pushers share: one blessing, one version, still increasing from one
blessed model to the next as TF Serving expects. The time is ML Metadata's
record of the artefact; where an orchestrator hands the Pusher no such record,
it is the modification time of the ``BLESSED`` file the Evaluator wrote.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import tensorflow as tf
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils


def version_of(blessing: Any) -> str:
    """The serving version of the model ``blessing`` blessed: its creation time in seconds."""
    created_ms = blessing.mlmd_artifact.create_time_since_epoch
    if created_ms > 0:
        return str(created_ms // 1000)
    marker = os.path.join(blessing.uri, evaluator_constants.BLESSED_FILE_NAME)
    return str(tf.io.gfile.stat(marker).mtime_nsec // 1_000_000_000)


class Executor(pusher_executor.Executor):
    """Pushes to ``<base_directory>/<version>``, the version taken from the blessing."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:  # noqa: N802
        """Copies the blessed model to its serving folder (skipped when already there)."""
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        blessing = artifact_utils.get_single_instance(
            input_dict[standard_component_specs.MODEL_BLESSING_KEY])
        version = version_of(blessing)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("only filesystem push destinations are supported, got "
                                      f"{destination.WhichOneof('destination')!r}.")
        model_path = self.GetModelPath(input_dict)
        serving_path = os.path.join(destination.filesystem.base_directory, version)
        if fileio.exists(os.path.join(serving_path, "saved_model.pb")):
            logging.info("Version %s is already complete at %s; not copied again.", version,
                         serving_path)
        else:
            # saved_model.pb last: servers take it as the sign that a version is complete
            # (a copy cut short is redone: copy_dir empties the folder first).
            io_utils.copy_dir(model_path, serving_path, deny_regex_patterns=[r"saved_model\.pb"])
            saved_model = os.path.join(model_path, "saved_model.pb")
            if fileio.exists(saved_model):
                io_utils.copy_file(saved_model, os.path.join(serving_path, "saved_model.pb"))
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        logging.info("Model version %s pushed to %s.", version, serving_path)
