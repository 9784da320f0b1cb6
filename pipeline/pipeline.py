"""``create_pipeline(config)``: the one pipeline definition for every runner."""

from __future__ import annotations

import os
from typing import Any, Optional

from tfx import types
from tfx import v1 as tfx
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import range_config_pb2, transform_pb2
from tfx.types import standard_artifacts

from components.correlation.component import FeatureCorrelation
from components.evaluate import config as eval_lib
from components.index import executor as index_executor
from components.index.component import IndexBuilder
from components.ingest.component import ContractExampleGen
from components.join.component import JoinExamples
from components.push.component import SharedVersionPusher
from components.trainer.component import SslTrainer
from pipeline import nodes
from pipeline.config import EVALUATOR_BEAM_ARGS, JOIN_BEAM_ARGS, PipelineConfig
from transforms import features, preprocessing, tables

PREPROCESSING_FN = "transforms.preprocessing.preprocessing_fn"


def _validated(name: str, examples: Any, schema_file: Optional[str]) -> tuple[list[Any], Any]:
    """StatisticsGen -> SchemaGen (or ImportSchemaGen) -> ExampleValidator."""
    stats_id, schema_id, validator_id = nodes.checks(name)
    stats = tfx.components.StatisticsGen(examples=examples).with_id(stats_id)
    if schema_file:
        schema = tfx.components.ImportSchemaGen(schema_file=schema_file)
    else:
        schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"],
                                          infer_feature_shape=False)
    schema = schema.with_id(schema_id)
    validator = tfx.components.ExampleValidator(
        statistics=stats.outputs["statistics"],
        schema=schema.outputs["schema"]).with_id(validator_id)
    return [stats, schema, validator], validator.outputs["anomalies"]


def _log_window(config: PipelineConfig, logs_gen: Any) -> tuple[list[Any], Any]:
    """The latest ``train_spans`` ingested log spans (just the new one without spans).

    The resolver reads every Examples artefact LogsExampleGen ever published
    (a plain Channel on the producer, not its output channel, which would
    only see this run's span) and keeps the latest ``train_spans`` spans.
    """
    if not config.spec.has_spans or config.spec.train_spans == 1 or not config.span_window:
        return [], logs_gen.outputs["examples"]
    every_span = types.Channel(type=standard_artifacts.Examples,
                               producer_component_id=logs_gen.id, output_key="examples")
    window = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
        config={"range_config": range_config_pb2.RangeConfig(
            rolling_range=range_config_pb2.RollingRange(num_spans=config.spec.train_spans))},
        examples=every_span).with_id(nodes.LOG_SPAN_WINDOW)
    window.add_upstream_node(logs_gen)
    return [window], window.outputs["examples"]


def data_components(config: PipelineConfig) -> list[Any]:
    """Ingestion, validation, join, Transform and feature correlations."""
    spec = config.spec
    logs_gen = ContractExampleGen(spec, tables.LOGS, config.span).with_id(nodes.LOGS_EXAMPLE_GEN)
    catalog_gen = ContractExampleGen(spec, tables.CATALOG).with_id(nodes.CATALOG_EXAMPLE_GEN)
    logs_checks, logs_anomalies = _validated("Logs", logs_gen.outputs["examples"],
                                             spec.logs_schema)
    catalog_checks, catalog_anomalies = _validated("Catalog", catalog_gen.outputs["examples"],
                                                   spec.catalog_schema)
    window, logs = _log_window(config, logs_gen)
    join = JoinExamples(spec, logs=logs, catalog=catalog_gen.outputs["examples"],
                        logs_anomalies=logs_anomalies, catalog_anomalies=catalog_anomalies,
                        side_input_max_items=config.join_side_input_max_items
                        ).with_id(nodes.JOIN).with_beam_pipeline_args(list(JOIN_BEAM_ARGS))
    analyze = [features.CATALOG_SPLIT]
    if spec.context_features:
        analyze.append(features.TRAIN_SPLIT)
    # Transform analyzes only: Trainers apply its graph to the joined rows as
    # they read them, as the serving export does (no transformed copy of every
    # row is written), and the inputs' statistics come from the checks above.
    transform = tfx.components.Transform(
        examples=join.outputs["examples"],
        schema=join.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=transform_pb2.SplitsConfig(analyze=analyze),
        custom_config=preprocessing.custom_config(spec),
        materialize=False, disable_statistics=True).with_id(nodes.TRANSFORM)
    correlation = FeatureCorrelation(
        spec, examples=join.outputs["examples"], settings=config.correlation
    ).with_id(nodes.CORRELATION)
    correlation.add_upstream_node(transform)
    return [logs_gen, catalog_gen, *logs_checks, *catalog_checks, *window, join, transform,
            correlation]


def trainers(config: PipelineConfig, join: Any, transform: Any, correlation: Any) -> list[Any]:
    """One SslTrainer per configured variant; the first one is ``Trainer``.

    Trainers read the joined examples and apply Transform's graph as they
    read (Transform writes no transformed copy of the rows).
    """
    out = []
    for i, variant in enumerate(config.train_variants):
        trainer = SslTrainer(
            examples=join.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            correlation=correlation.outputs["correlation"],
            spec=config.spec, hparams=config.trainer_hparams(variant))
        out.append(trainer.with_id(nodes.trainer(variant, first=i == 0)))
    return out


def evaluation(config: PipelineConfig, examples: Any, model: Any) -> list[Any]:
    """Latest-blessed-model resolver and the Evaluator (TFMA) on the eval split.

    The resolver finds, in ML Metadata, the newest model this pipeline's
    Evaluator blessed; it is the baseline of the change threshold (absent on
    the first run, when only the value floor applies).
    """
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(nodes.BLESSED_MODEL_RESOLVER)
    evaluator = tfx.components.Evaluator(
        examples=examples, model=model, baseline_model=baseline.outputs["model"],
        example_splits=[features.EVAL_SPLIT],
        eval_config=eval_lib.eval_config(config.spec, config.eval_settings)
    ).with_id(nodes.EVALUATOR).with_beam_pipeline_args(list(EVALUATOR_BEAM_ARGS))
    return [baseline, evaluator]


def served_names(config: PipelineConfig) -> tuple[str, str, str]:
    """Serving names of the ScaNN, brute-force and query-tower exports."""
    return (config.model_name, f"{config.model_name}_bruteforce", f"{config.model_name}_query")


def pusher(config: PipelineConfig, name: str, model: Any, blessing: Any) -> Any:
    """A Pusher of ``model`` to ``<serving_root>/<name>/<version>``, gated on ``blessing``.

    The version is the blessing's (:mod:`components.push.executor`), so every
    export of one blessed model is pushed under one version.
    """
    return SharedVersionPusher(
        model=model, model_blessing=blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(config.serving_root, name)))
    ).with_id(nodes.pusher(name))


def serving_components(config: PipelineConfig, join: Any, trainer: Any) -> list[Any]:
    """IndexBuilder, Evaluator, and one blessing-gated Pusher per export.

    The Evaluator scores the brute-force retrieval export (the trained model,
    exact search over the whole catalog); its blessing gates every Pusher,
    so an unblessed model reaches no serving folder.
    """
    index = IndexBuilder(config.spec, model=trainer.outputs["model"],
                         examples=join.outputs["examples"], config=config.index_config
                         ).with_id(nodes.INDEX)
    resolver, evaluator = evaluation(config, join.outputs["examples"],
                                     index.outputs[index_executor.BRUTE_FORCE_MODEL_KEY])
    models = (index.outputs[index_executor.SCANN_MODEL_KEY],
              index.outputs[index_executor.BRUTE_FORCE_MODEL_KEY], trainer.outputs["model"])
    pushers = [pusher(config, name, model, evaluator.outputs["blessing"])
               for name, model in zip(served_names(config), models)]
    return [index, resolver, evaluator, *pushers]


def _all_components(config: PipelineConfig) -> list[Any]:
    data = data_components(config)
    by_id = {c.id: c for c in data}
    trained = trainers(config, by_id[nodes.JOIN], by_id[nodes.TRANSFORM],
                       by_id[nodes.CORRELATION])
    if not trained:
        return data
    return data + trained + serving_components(config, by_id[nodes.JOIN], trained[0])


def create_pipeline(config: PipelineConfig) -> tfx_pipeline.Pipeline:
    """Builds the pipeline; the same object runs locally or compiles for Kubeflow.

    A local run root gets SQLite ML Metadata; a remote one (``gs://...``) none,
    since the orchestrator (Kubeflow, Vertex) brings its own.
    """
    return tfx_pipeline.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=_all_components(config),
        enable_cache=config.enable_cache,
        metadata_connection_config=(
            None if config.is_remote
            else metadata.sqlite_metadata_connection_config(config.metadata_path)),
        beam_pipeline_args=list(config.beam_pipeline_args))
