"""The run summary printed at the end of ``python -m pipeline run``."""

from __future__ import annotations

import os

import tensorflow as tf

from components.correlation import report as correlation_report
from components.evaluate import report as eval_report
from components.ingest import rows
from components.join import executor as join_executor
from pipeline import pipeline, records
from pipeline.config import PipelineConfig
from transforms import features

LOGS_GEN, CATALOG_GEN, JOIN, TRANSFORM, CORRELATION = (
    "LogsExampleGen", "CatalogExampleGen", "JoinExamples", "Transform", "FeatureCorrelation")


def _rejects(props: dict[str, object]) -> str:
    bad = {k: props.get(k, 0) for k in (rows.MALFORMED, rows.DUPLICATE)}
    detail = ", ".join(f"{k} {v}" for k, v in bad.items() if v)
    return f"{sum(bad.values())} rejected" + (f" ({detail})" if detail else "")


def _vocab_sizes(transform_graph: str) -> dict[str, int]:
    assets = os.path.join(transform_graph, "transform_fn", "assets")
    sizes = {}
    for name in sorted(tf.io.gfile.listdir(assets)) if tf.io.gfile.exists(assets) else []:
        with tf.io.gfile.GFile(os.path.join(assets, name)) as f:
            sizes[name.removeprefix("vocab_")] = sum(1 for _ in f)
    return sizes


def _split_line(props: dict[str, object], split: str) -> str:
    parts = " / ".join(f"{b} {props.get(f'{split}_{b}', 0)}" for b in features.BUCKETS)
    return f"{props.get(split, 0)} ({parts})"


def summarize(config: PipelineConfig) -> str:
    """Describes the latest results of the run root: where, how many, what was rejected."""
    store = records.open_store(config.metadata_path)
    name = config.pipeline_name
    lines = [f"Run root: {os.path.abspath(config.run_root)}",
             f"  artefacts:   {config.pipeline_root}",
             f"  ML Metadata: {config.metadata_path}"]
    for node, label in ((LOGS_GEN, "logs"), (CATALOG_GEN, "catalog")):
        record = records.latest(store, name, node)
        if record:
            props = record.properties["examples"]
            span = f" span {props.get('span')}" if label == "logs" and "span" in props else ""
            lines.append(f"Ingested {label}{span}: {props.get('rows_ok', 0)} rows, "
                         f"{_rejects(props)} [{record.state}] -> {record.outputs['examples'][0]}")
    join = records.latest(store, name, JOIN)
    if join:
        props = join.properties[join_executor.EXAMPLES_KEY]
        lines += [
            f"Joined [{join.state}] -> {join.outputs[join_executor.EXAMPLES_KEY][0]}",
            f"  items (catalog): {_split_line(props, features.CATALOG_SPLIT)}",
            f"  pairs train:     {_split_line(props, features.TRAIN_SPLIT)}",
            f"  pairs eval:      {_split_line(props, features.EVAL_SPLIT)}",
            f"  log rows rejected, item not in catalog: {props.get('rejected_unknown_item', 0)}",
            "  (head = top 10% of items seen in training by frequency; cold = unseen)",
        ]
    transform = records.latest(store, name, TRANSFORM)
    if transform:
        graph = transform.outputs["transform_graph"][0]
        sizes = ", ".join(f"{k} {v}" for k, v in _vocab_sizes(graph).items())
        lines += [f"Transform [{transform.state}] -> {graph}", f"  vocabularies: {sizes}"]
    correlation = records.latest(store, name, CORRELATION)
    if correlation:
        uri = correlation.outputs["correlation"][0]
        doc = correlation_report.read(uri)
        lines += [f"Feature correlations [{correlation.state}] -> {uri}",
                  f"  heat map: {os.path.join(uri, correlation_report.PNG_FILE)}",
                  f"  CFM groups ({doc['weighting']} weighting, masked set of "
                  f"{doc['n_masked']} of {len(doc['features'])} features):"]
        lines += [f"    {line}" for line in correlation_report.describe_groups(doc)]
    for i, variant in enumerate(config.train_variants):
        node = "Trainer" if i == 0 else f"Trainer_{variant}"
        trainer = records.latest(store, name, node)
        if trainer:
            lines += [f"{node} ({variant}) [{trainer.state}] -> {trainer.outputs['model'][0]}",
                      f"  TensorBoard: {trainer.outputs['model_run'][0]}"]
    index = records.latest(store, name, "IndexBuilder")
    if index:
        props = index.properties["scann_model"]
        recall = {k: v for k, v in props.items() if k.startswith("recall_at_")}
        lines.append(f"IndexBuilder [{index.state}] -> {index.outputs['scann_model'][0]} "
                     f"({props.get('items')} items, ScaNN {recall} vs brute force)")
    lines += _evaluation(store, config)
    if os.path.isdir(config.serving_root):
        served = sorted(os.listdir(config.serving_root))
        lines += [f"Serving folders (newest pushed versions): {config.serving_root} {served}",
                  "  start the endpoint: python -m serving " + " ".join(
                      f"--model {m}={os.path.join(config.serving_root, m)}" for m in served)]
    return "\n".join(lines)


def _evaluation(store: object, config: PipelineConfig) -> list[str]:
    """Evaluator verdict, metric table by slice, results page, and what was pushed."""
    name = config.pipeline_name
    evaluator = records.latest(store, name, "Evaluator")
    if not evaluator or not evaluator.outputs.get("evaluation"):
        return []
    uri = evaluator.outputs["evaluation"][0]
    blessed, failures = eval_report.verdict(uri)
    metrics = eval_report.metrics_by_slice(uri)
    page = eval_report.write_page(uri, metrics, os.path.join(
        os.path.abspath(config.run_root), "results"), blessed, failures)
    lines = [f"Evaluator [{evaluator.state}] -> {uri}"]
    if blessed:
        lines.append("  model BLESSED: passes the Recall@50 floor and " + (
            "is not worse than the latest blessed model" if eval_report.has_baseline(uri)
            else "no model was blessed before"))
    else:
        lines.append("  MODEL NOT BLESSED, NOTHING PUSHED: " + "; ".join(failures))
    lines += [f"  {row}" for row in eval_report.table(metrics)]
    lines.append(f"  results page: {page}")
    for served in pipeline.served_names(config):
        node = f"Pusher_{served}"
        pusher = records.latest(store, name, node)
        if not pusher:
            continue
        props = pusher.properties.get("pushed_model", {})
        if props.get("pushed"):
            lines.append(f"{node}: pushed version {props.get('pushed_version')} -> "
                         f"{props.get('pushed_destination')}")
        else:
            lines.append(f"{node}: not pushed (model not blessed)")
    return lines

