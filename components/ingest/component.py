"""ContractExampleGen: a FileBasedExampleGen for the dataset contract.

It keeps ExampleGen's driver (span resolution, fingerprints, caching) and
adds two execution parameters: the dataset spec (JSON) and the table kind.
"""

from __future__ import annotations

from typing import Optional

from tfx.components.example_gen import driver
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import channel, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components.ingest import executor
from transforms import features, tables
from transforms.spec import SPEC_PARAMETER, DatasetSpec, spec_to_json


class ContractExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    """FileBasedExampleGen's spec plus the dataset spec and table kind."""

    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        SPEC_PARAMETER: ExecutionParameter(type=str),
        executor.TABLE_KEY: ExecutionParameter(type=str),
    }


class ContractExampleGen(base_beam_component.BaseBeamComponent):
    """Ingests the logs or the catalog of a dataset spec into Examples."""

    SPEC_CLASS = ContractExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = driver.FileBasedDriver

    def __init__(self, spec: DatasetSpec, table: str,
                 span: Optional[int] = None) -> None:
        """Builds the component.

        Args:
          spec: the validated dataset spec.
          table: ``logs`` or ``catalog``.
          span: ingest this span of the logs; None takes the latest span.
        """
        source = spec.logs if table == tables.LOGS else spec.catalog
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=source.pattern)])
        if table == tables.LOGS:
            output_config = _log_split_config(spec)
        else:
            input_config.splits[0].name = features.CATALOG_SPLIT
            output_config = example_gen_pb2.Output()
        range_config = None
        if span is not None:
            range_config = range_config_pb2.RangeConfig(
                static_range=range_config_pb2.StaticRange(
                    start_span_number=span, end_span_number=span))
        super().__init__(spec=ContractExampleGenSpec(
            input_base=source.base,
            input_config=input_config,
            output_config=output_config,
            range_config=range_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            **{SPEC_PARAMETER: spec_to_json(spec)},
            table=table,
            examples=channel.Channel(type=standard_artifacts.Examples)))


def _log_split_config(spec: DatasetSpec) -> example_gen_pb2.Output:
    """Deterministic train/eval split: a hash of ``split.key`` (or the row)."""
    config = example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=features.TRAIN_SPLIT,
                                          hash_buckets=100 - spec.eval_percent),
        example_gen_pb2.SplitConfig.Split(name=features.EVAL_SPLIT, hash_buckets=spec.eval_percent),
    ])
    if spec.split_key:
        config.partition_feature_name = spec.split_key
    return example_gen_pb2.Output(split_config=config)


__all__ = ["ContractExampleGen"]
