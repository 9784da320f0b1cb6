"""FeatureCorrelation: pairwise mutual information between item features."""

from __future__ import annotations

import dataclasses

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.correlation import estimator, executor
from transforms.spec import SPEC_PARAMETER, DatasetSpec, spec_to_json


class FeatureCorrelations(Artifact):
    """MI / NMI between item features, entropies, supports and CFM groups."""

    TYPE_NAME = "ssl4rec.FeatureCorrelations"  # <namespace>.<Title>, as Kubeflow v2 requires


class FeatureCorrelationSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of :class:`FeatureCorrelation`."""

    PARAMETERS = {
        SPEC_PARAMETER: ExecutionParameter(type=str),
        executor.WEIGHTING_KEY: ExecutionParameter(type=str),
        executor.MAX_VALUES_KEY: ExecutionParameter(type=int),
        executor.MEASURE_KEY: ExecutionParameter(type=str),
    }
    INPUTS = {executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {executor.CORRELATION_KEY: ChannelParameter(type=FeatureCorrelations)}


@dataclasses.dataclass(frozen=True)
class CorrelationSettings:
    """How FeatureCorrelation counts and groups; validated here, once.

    Attributes:
      weighting: ``items`` (each catalog item once, the default: matches the
        uniform SSL distribution) or ``train_frequency`` (items weighted by
        their training count; cold items drop out).
      max_values: features with more distinct values are hashed into this
        many buckets (bias: MI is underestimated for them).
      measure: the dependence measure that ranks and groups the features:
        ``ami`` (adjusted MI, chance-corrected; the default) or ``nmi``
        (plug-in MI / max entropy). The artefact records both.
    """

    weighting: str = "items"
    max_values: int = 10_000
    measure: str = "ami"

    def __post_init__(self) -> None:
        """Rejects values outside their choices or range, naming the setting."""
        if self.weighting not in executor.WEIGHTINGS:
            raise ValueError(f"correlation weighting must be one of {executor.WEIGHTINGS}, "
                             f"got {self.weighting!r}.")
        if self.max_values < 2:
            raise ValueError(f"correlation max_values must be >= 2, got {self.max_values}.")
        if self.measure not in estimator.MEASURES:
            raise ValueError(f"correlation measure must be one of {estimator.MEASURES}, "
                             f"got {self.measure!r}.")


class FeatureCorrelation(base_beam_component.BaseBeamComponent):
    """Computes MI between every pair of item features over the catalog split.

    Args:
      spec: the dataset spec (which features, which is the id).
      examples: the joined Examples (its ``catalog`` split is read).
      settings: weighting, hashing limit and grouping measure.
    """

    SPEC_CLASS = FeatureCorrelationSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, spec: DatasetSpec, examples: types.BaseChannel,
                 settings: CorrelationSettings = CorrelationSettings()) -> None:
        """Builds the component."""
        super().__init__(spec=FeatureCorrelationSpec(
            **{SPEC_PARAMETER: spec_to_json(spec)},
            weighting=settings.weighting, max_values=settings.max_values,
            measure=settings.measure,
            examples=examples,
            correlation=channel.Channel(type=FeatureCorrelations)))
