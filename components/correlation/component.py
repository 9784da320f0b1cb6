"""FeatureCorrelation: pairwise dependence between item features, for CFM's groups.

By default the chance-corrected (adjusted) mutual information; plug-in
normalized MI on request (``CorrelationSettings.measure``).
"""

from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.correlation import executor
from components.correlation.settings import CorrelationSettings
from transforms.spec import SPEC_PARAMETER, DatasetSpec, spec_to_json


class FeatureCorrelations(Artifact):
    """Adjusted MI and NMI between item features, entropies, supports and CFM groups."""

    TYPE_NAME = "ssl4rec.FeatureCorrelations"  # <namespace>.<Title>, as Kubeflow v2 requires


class FeatureCorrelationSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of :class:`FeatureCorrelation`."""

    PARAMETERS = {
        SPEC_PARAMETER: ExecutionParameter(type=str),
        executor.WEIGHTING_KEY: ExecutionParameter(type=str),
        executor.MAX_VALUES_KEY: ExecutionParameter(type=int),
        executor.MEASURE_KEY: ExecutionParameter(type=str),
        executor.SAMPLE_ITEMS_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {executor.CORRELATION_KEY: ChannelParameter(type=FeatureCorrelations)}


class FeatureCorrelation(base_beam_component.BaseBeamComponent):
    """Computes the dependence of every pair of item features over the catalog split.

    Adjusted MI (chance-corrected, the default grouping measure) and plug-in
    NMI; the CFM groups are formed by ``settings.measure``.

    Args:
      spec: the dataset spec (which features, which is the id).
      examples: the joined Examples (its ``catalog`` split is read).
      settings: weighting, hashing limit, grouping measure and item sample.
    """

    SPEC_CLASS = FeatureCorrelationSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, spec: DatasetSpec, examples: types.BaseChannel,
                 settings: Optional[CorrelationSettings] = None) -> None:
        """Builds the component (default settings when None)."""
        settings = settings or CorrelationSettings()
        super().__init__(spec=FeatureCorrelationSpec(
            **{SPEC_PARAMETER: spec_to_json(spec)},
            weighting=settings.weighting, max_values=settings.max_values,
            measure=settings.measure, sample_items=settings.sample_items,
            examples=examples,
            correlation=channel.Channel(type=FeatureCorrelations)))
