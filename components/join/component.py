"""JoinExamples: the custom Beam component that builds the training data."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.join import DEFAULT_SIDE_INPUT_MAX_ITEMS, executor
from transforms.spec import SPEC_PARAMETER, DatasetSpec, spec_to_json

# Largest catalog joined in memory. The join's worker holds every item's id and
# serialized item_* part: the step peaks at 3.7 GiB at 1M items of the synthetic
# catalog (6 short features); catalogs with long text features need a lower setting.


class JoinExamplesSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of :class:`JoinExamples`."""

    PARAMETERS = {
        SPEC_PARAMETER: ExecutionParameter(type=str),
        executor.SIDE_INPUT_MAX_ITEMS_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        executor.LOGS_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor.CATALOG_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor.LOGS_ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        executor.CATALOG_ANOMALIES_KEY: ChannelParameter(
            type=standard_artifacts.ExampleAnomalies),
    }
    OUTPUTS = {
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor.SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
    }


class JoinExamples(base_beam_component.BaseBeamComponent):
    """Joins logs (one or more spans) with the catalog.

    Output splits: ``train`` and ``eval`` (log pairs with ``query_*``,
    ``context_*`` and ``item_*`` features) and ``catalog`` (every item once,
    ``item_*`` only); every row carries the engaged item's training count and
    head/tail/cold bucket. Also outputs the Schema Transform reads them with.
    A catalog of at most ``side_input_max_items`` rows is joined as an
    in-memory side input, a larger one by keyed shuffles.
    """

    SPEC_CLASS = JoinExamplesSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, spec: DatasetSpec, logs: types.BaseChannel,
                 catalog: types.BaseChannel, logs_anomalies: types.BaseChannel,
                 catalog_anomalies: types.BaseChannel,
                 side_input_max_items: int = DEFAULT_SIDE_INPUT_MAX_ITEMS) -> None:
        """Builds the component from the dataset spec and upstream channels."""
        super().__init__(spec=JoinExamplesSpec(
            **{SPEC_PARAMETER: spec_to_json(spec)},
            side_input_max_items=side_input_max_items,
            logs=logs, catalog=catalog, logs_anomalies=logs_anomalies,
            catalog_anomalies=catalog_anomalies,
            examples=channel.Channel(type=standard_artifacts.Examples),
            schema=channel.Channel(type=standard_artifacts.Schema)))
