"""The Evaluator's TFMA configuration and blessing thresholds."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from serving import signatures as sig
from transforms import features
from transforms.spec import DatasetSpec

if TYPE_CHECKING:
    import tensorflow_model_analysis as tfma

SIGNATURE = sig.EVALUATE
KS = (10, 50)
GATE_METRIC = "recall_at_50"
METRICS_MODULE = "components.evaluate.metrics"


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What the Evaluator measures and what it takes to bless a model.

    Attributes:
      min_recall_at_50: overall Recall@50 must reach this (value floor).
      max_recall_drop: overall Recall@50 may fall at most this much (absolute)
        below the latest blessed model's (change threshold; skipped when no
        model is blessed yet).
      slice_features: item features to slice by besides head/tail/cold
        (multi-valued ones give one slice per value, e.g. each genre).
    """

    min_recall_at_50: float = 0.01
    max_recall_drop: float = 0.01
    slice_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Validates ranges."""
        if not 0.0 <= self.min_recall_at_50 <= 1.0:
            raise ValueError(f"min_recall_at_50 must be in [0, 1], got {self.min_recall_at_50}.")
        if not 0.0 <= self.max_recall_drop <= 1.0:
            raise ValueError(f"max_recall_drop must be in [0, 1], got {self.max_recall_drop}.")


def metric_name(kind: str, k: int) -> str:
    """``recall_at_10``, ``map_at_50``, ..."""
    return f"{kind}_at_{k}"


def eval_config(spec: DatasetSpec, settings: EvalSettings) -> tfma.EvalConfig:
    """Recall@K, MAP@K and example counts, sliced, with blessing thresholds.

    ``settings.slice_features`` are checked against the spec by ``PipelineConfig``.
    TFMA is imported here, not at module load, so that the command line can
    route its start-up output to the run's log first.
    """
    import tensorflow_model_analysis as tfma

    metrics = [tfma.MetricConfig(class_name="ExampleCount")]
    for k in KS:
        gate = []
        if metric_name("recall", k) == GATE_METRIC:
            # On the overall slice only: a plain `threshold` would apply to every slice.
            gate = [tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec()],
                threshold=tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(
                        lower_bound={"value": settings.min_recall_at_50}),
                    change_threshold=tfma.GenericChangeThreshold(
                        direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                        absolute={"value": -settings.max_recall_drop})))]
        # Every K in each metric's config: all four share one pass per example.
        for class_name, kind, thresholds in (("RecallAtK", "recall", gate),
                                             ("MeanAveragePrecisionAtK", "map", [])):
            metrics.append(tfma.MetricConfig(
                class_name=class_name, module=METRICS_MODULE, per_slice_thresholds=thresholds,
                config=json.dumps({"top_k": k, "ks": list(KS), "name": metric_name(kind, k)})))
    slicing = [tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[features.ITEM_BUCKET])]
    slicing += [tfma.SlicingSpec(feature_keys=[features.item_key(name)])
                for name in settings.slice_features]
    return tfma.EvalConfig(
        # The exports are plain SavedModels: named, TFMA does not first try
        # (and fail) to load each as a Keras model to find out (2 s a model).
        model_specs=[tfma.ModelSpec(signature_name=SIGNATURE, model_type=tfma.TF_GENERIC,
                                    label_key=features.item_key(spec.item_id))],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        slicing_specs=slicing)
