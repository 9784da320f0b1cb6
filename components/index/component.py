"""IndexBuilder: the custom component after the Trainer."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.index import executor
from components.index.search import IndexConfig
from transforms.spec import SPEC_PARAMETER, DatasetSpec, spec_to_json


class IndexBuilderSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of :class:`IndexBuilder`."""

    PARAMETERS = {
        SPEC_PARAMETER: ExecutionParameter(type=str),
        executor.INDEX_CONFIG_KEY: ExecutionParameter(type=str),
    }
    INPUTS = {
        executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        executor.SCANN_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.BRUTE_FORCE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }


class IndexBuilder(base_beam_component.BaseBeamComponent):
    """Embeds every catalog item (Beam), builds ScaNN, checks recall, exports.

    Args:
      spec: the dataset spec (which column is the item id).
      model: the Trainer's model (its export embeds items and queries).
      examples: the joined raw Examples (``catalog`` split embedded; ``eval``
        split queries measure recall).
      config: ScaNN settings and the recall floor.

    Outputs ``scann_model`` (ScaNN retrieval SavedModel; custom property
    ``recall_at_<k>``; also holds the item embeddings) and
    ``brute_force_model`` (standard ops only).
    """

    SPEC_CLASS = IndexBuilderSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, spec: DatasetSpec, model: types.BaseChannel,
                 examples: types.BaseChannel, config: Optional[IndexConfig] = None) -> None:
        """Builds the component."""
        config = config or IndexConfig()
        super().__init__(spec=IndexBuilderSpec(
            **{SPEC_PARAMETER: spec_to_json(spec)},
            index_config=json.dumps(dataclasses.asdict(config), sort_keys=True),
            model=model, examples=examples,
            scann_model=channel.Channel(type=standard_artifacts.Model),
            brute_force_model=channel.Channel(type=standard_artifacts.Model)))
