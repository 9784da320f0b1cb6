"""SslTrainer: the stock Trainer with a FeatureCorrelation input channel.

``TrainerSpec`` is extended with an optional ``correlation`` input, and the
generic executor hands its URI (and the catalog split's folder) to
``run_fn``, so ML Metadata records that the model was trained from that
artefact.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, channel, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components.correlation.component import FeatureCorrelations
from components.trainer import hparams as hparams_lib
from transforms import features
from transforms.spec import SPEC_PARAMETER, DatasetSpec, is_url, spec_from_dict

CORRELATION_KEY = "correlation"
RUN_FN = "components.trainer.run.run_fn"
#: ``custom_config`` keys: the layout is this component's, read by ``run_fn``.
HPARAMS_KEY = "hparams"


def custom_config(spec: DatasetSpec, hp: hparams_lib.HParams) -> dict[str, Any]:
    """The ``custom_config`` that hands the validated HParams and spec to ``run_fn``."""
    return {HPARAMS_KEY: hp.to_dict(), SPEC_PARAMETER: spec.to_dict()}


def read_custom_config(config: Optional[dict[str, Any]]
                       ) -> tuple[hparams_lib.HParams, DatasetSpec]:
    """Inverts :func:`custom_config` (in ``run_fn``)."""
    config = config or {}
    if SPEC_PARAMETER not in config:
        raise ValueError(f"the Trainer's custom_config has no {SPEC_PARAMETER!r}; build it with "
                         "components.trainer.component.custom_config.")
    return (hparams_lib.from_dict(config.get(HPARAMS_KEY, {})),
            spec_from_dict(config[SPEC_PARAMETER]))


class SslTrainerSpec(standard_component_specs.TrainerSpec):
    """TrainerSpec plus the optional ``correlation`` input."""

    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        CORRELATION_KEY: ChannelParameter(type=FeatureCorrelations, optional=True),
    }


class Executor(trainer_executor.GenericExecutor):
    """GenericExecutor that adds ``correlation_uri`` and ``catalog_dir`` to FnArgs."""

    def _GetFnArgs(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
                   exec_properties: dict[str, Any]) -> Any:  # noqa: N802
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        correlation = input_dict.get(CORRELATION_KEY) or []
        fn_args.correlation_uri = correlation[0].uri if correlation else None
        examples = input_dict[standard_component_specs.EXAMPLES_KEY]
        fn_args.catalog_dir = artifact_utils.get_split_uri(examples, features.CATALOG_SPLIT)
        if not os.path.isdir(fn_args.catalog_dir) and not is_url(fn_args.catalog_dir):
            raise ValueError(f"the Trainer's examples have no '{features.CATALOG_SPLIT}' split "
                             f"({fn_args.catalog_dir}); pass JoinExamples' examples.")
        return fn_args


class SslTrainer(base_component.BaseComponent):
    """Trains the two-tower SSL model (``components.trainer.run.run_fn``)."""

    SPEC_CLASS = SslTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 spec: DatasetSpec, hparams: hparams_lib.HParams,
                 correlation: Optional[types.BaseChannel] = None) -> None:
        """Builds the component.

        Args:
          examples: the joined examples (splits train, eval, catalog), raw: the
            Trainer applies ``transform_graph`` as it reads them.
          transform_graph: Transform's graph.
          spec: the dataset spec.
          hparams: the validated hyper-parameters (``train_steps`` is also
            recorded as the Trainer's train_args.num_steps).
          correlation: the FeatureCorrelation artefact (needed by CFM variants).
        """
        super().__init__(spec=SslTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            correlation=correlation,
            run_fn=RUN_FN,
            train_args=trainer_pb2.TrainArgs(splits=[features.TRAIN_SPLIT],
                                             num_steps=hparams.train_steps),
            eval_args=trainer_pb2.EvalArgs(splits=[features.EVAL_SPLIT], num_steps=0),
            custom_config=json_utils.dumps(custom_config(spec, hparams)),
            model=channel.Channel(type=standard_artifacts.Model),
            model_run=channel.Channel(type=standard_artifacts.ModelRun)))
