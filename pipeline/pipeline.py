"""``create_pipeline(config)``: the one pipeline definition for every runner."""

from __future__ import annotations

from typing import Any, Optional

from tfx import v1 as tfx
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import range_config_pb2, transform_pb2

from components.ingest import rows
from components.ingest.component import ContractExampleGen
from components.join.component import JoinExamples
from pipeline.config import PipelineConfig
from transforms import features, preprocessing

PREPROCESSING_FN = "transforms.preprocessing.preprocessing_fn"


def _validated(name: str, examples: Any, schema_file: Optional[str]) -> tuple[list[Any], Any]:
    """StatisticsGen -> SchemaGen (or ImportSchemaGen) -> ExampleValidator."""
    stats = tfx.components.StatisticsGen(examples=examples).with_id(f"{name}StatisticsGen")
    if schema_file:
        schema = tfx.components.ImportSchemaGen(schema_file=schema_file)
    else:
        schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"],
                                          infer_feature_shape=False)
    schema = schema.with_id(f"{name}SchemaGen")
    validator = tfx.components.ExampleValidator(
        statistics=stats.outputs["statistics"],
        schema=schema.outputs["schema"]).with_id(f"{name}ExampleValidator")
    return [stats, schema, validator], validator.outputs["anomalies"]


def _log_window(config: PipelineConfig, logs: Any) -> tuple[list[Any], Any]:
    """The latest ``train_spans`` ingested log spans (just the new one without spans)."""
    if not config.spec.has_spans or config.spec.train_spans == 1:
        return [], logs
    window = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
        config={"range_config": range_config_pb2.RangeConfig(
            rolling_range=range_config_pb2.RollingRange(num_spans=config.spec.train_spans))},
        examples=logs).with_id("LogSpanWindow")
    return [window], window.outputs["examples"]


def data_components(config: PipelineConfig) -> list[Any]:
    """Ingestion, validation, join and Transform: the pipeline's data half."""
    spec = config.spec
    logs_gen = ContractExampleGen(spec, rows.LOGS, config.span).with_id("LogsExampleGen")
    catalog_gen = ContractExampleGen(spec, rows.CATALOG).with_id("CatalogExampleGen")
    logs_checks, logs_anomalies = _validated("Logs", logs_gen.outputs["examples"],
                                             spec.logs_schema)
    catalog_checks, catalog_anomalies = _validated("Catalog", catalog_gen.outputs["examples"],
                                                   spec.catalog_schema)
    window, logs = _log_window(config, logs_gen.outputs["examples"])
    join = JoinExamples(spec, logs=logs, catalog=catalog_gen.outputs["examples"],
                        logs_anomalies=logs_anomalies, catalog_anomalies=catalog_anomalies)
    analyze = [features.CATALOG_SPLIT]
    if spec.context_features:
        analyze.append(features.TRAIN_SPLIT)
    transform = tfx.components.Transform(
        examples=join.outputs["examples"],
        schema=join.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=transform_pb2.SplitsConfig(
            analyze=analyze, transform=list(features.JOINED_SPLITS)),
        custom_config={preprocessing.SPEC_KEY: spec.to_dict()})
    return [logs_gen, catalog_gen, *logs_checks, *catalog_checks, *window, join, transform]


def create_pipeline(config: PipelineConfig) -> tfx_pipeline.Pipeline:
    """Builds the pipeline; the same object runs locally or compiles for Kubeflow."""
    return tfx_pipeline.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=data_components(config),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        beam_pipeline_args=list(config.beam_pipeline_args))
