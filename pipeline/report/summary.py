"""The run summary: :func:`collect` reads a run root's latest results, :func:`render` words them.

Reading and wording are apart so that the command line can also draw the
same results as a page (``pipeline.results_page``); nothing here writes files.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import tensorflow as tf

from components.index import executor as index_executor
from components.ingest import executor as ingest_executor
from components.join import beam_join
from components.join import executor as join_executor
from pipeline import nodes as nodes_lib
from pipeline import pipeline
from pipeline.config import PipelineConfig
from pipeline.report import records, step_lines
from transforms import features


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The Evaluator's verdict and metrics (TFMA's own loaders read them once)."""

    record: records.NodeRecord
    uri: str
    blessed: bool
    failures: list[str]
    metrics: dict[str, dict[str, float]]
    has_baseline: bool


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Everything the summary and the results page show about a run root.

    Attributes:
      config: the run's configuration.
      nodes: record of each node's latest finished execution, by node id.
      vocabularies: vocabulary name -> size (from the Transform graph).
      correlation: the FeatureCorrelation document (``correlation.json``).
      correlation_pngs: the PNG files of the FeatureCorrelation artefact.
      trainers: (node id, variant) of every Trainer that finished.
      evaluation: the Evaluator's results, if it ran.
      pushes: Pusher node id -> its ``pushed_model`` properties.
      served: model folders under the serving root.
      steps: wall time of every node's latest execution, in pipeline order.
    """

    config: PipelineConfig
    nodes: dict[str, records.NodeRecord]
    vocabularies: dict[str, int]
    correlation: Optional[dict[str, Any]]
    correlation_pngs: list[str]
    trainers: list[tuple[str, str]]
    evaluation: Optional[Evaluation]
    pushes: dict[str, dict[str, object]]
    served: list[str]
    steps: list[step_lines.StepTime]

    @property
    def wall_seconds(self) -> float:
        """From the first step's start to the last step's end (ML Metadata times)."""
        if not self.steps:
            return 0.0
        return (max(s.end_ms for s in self.steps) - min(s.start_ms for s in self.steps)) / 1e3


def _trainer_ids(config: PipelineConfig) -> list[tuple[str, str]]:
    return [(nodes_lib.trainer(v, first=i == 0), v) for i, v in enumerate(config.train_variants)]


def node_ids(config: PipelineConfig) -> list[str]:
    """Every node of the pipeline of ``config``, in pipeline order."""
    return [c.id for c in pipeline.create_pipeline(config).components]


def collect(config: PipelineConfig) -> RunSummary:
    """Reads the latest results of ``config``'s run root from ML Metadata and artefacts."""
    store = records.open_store(config.metadata_path)
    ids = node_ids(config)
    nodes = {n: r for n in ids if (r := records.latest(store, config.pipeline_name, n))}
    steps = [t for n in ids if (t := step_lines.step_time(store, config.pipeline_name, n))]
    vocabularies, doc, pngs = {}, None, []
    if nodes_lib.TRANSFORM in nodes:
        vocabularies = step_lines.vocab_sizes(
            nodes[nodes_lib.TRANSFORM].outputs["transform_graph"][0])
    if nodes_lib.CORRELATION in nodes:
        from components.correlation import report as correlation_report

        uri = nodes[nodes_lib.CORRELATION].outputs["correlation"][0]
        doc = correlation_report.read(uri)
        pngs = sorted(tf.io.gfile.glob(os.path.join(uri, "*.png")))
    served = sorted(os.listdir(config.serving_root)) if os.path.isdir(config.serving_root) \
        else []
    return RunSummary(
        config=config, nodes=nodes, vocabularies=vocabularies, correlation=doc,
        correlation_pngs=pngs,
        trainers=[(n, v) for n, v in _trainer_ids(config) if n in nodes],
        evaluation=_evaluation(nodes.get(nodes_lib.EVALUATOR)),
        pushes={n: r.properties.get("pushed_model", {}) for n, r in nodes.items()
                if n.startswith(nodes_lib.pusher(""))},
        served=served, steps=steps)


def _evaluation(record: Optional[records.NodeRecord]) -> Optional[Evaluation]:
    if not record or not record.outputs.get("evaluation"):
        return None
    from components.evaluate import report as eval_report

    uri = record.outputs["evaluation"][0]
    blessed, failures = eval_report.verdict(uri)
    return Evaluation(record, uri, blessed, failures, eval_report.metrics_by_slice(uri),
                      eval_report.has_baseline(uri))


def split_line(props: dict[str, object], split: str) -> str:
    """``N (head a / tail b / cold c)`` of one joined split."""
    parts = " / ".join(f"{b} {props.get(f'{split}_{b}', 0)}" for b in features.BUCKETS)
    return f"{props.get(split, 0)} ({parts})"


def verdict_line(evaluation: Evaluation) -> str:
    """The blessing verdict in one sentence."""
    if evaluation.blessed:
        return "model BLESSED: passes the Recall@50 floor and " + (
            "is not worse than the latest blessed model" if evaluation.has_baseline
            else "no model was blessed before")
    return "MODEL NOT BLESSED, NOTHING PUSHED: " + "; ".join(evaluation.failures)


def push_line(node: str, props: dict[str, object]) -> str:
    """What one Pusher did."""
    if props.get("pushed"):
        return (f"{node}: pushed version {props.get('pushed_version')} -> "
                f"{props.get('pushed_destination')}")
    return f"{node}: not pushed (model not blessed)"


def commands(summary: RunSummary) -> list[str]:
    """Shell commands to start the endpoint on the pushed models and TensorBoard."""
    root = summary.config.serving_root
    out = []
    if summary.served:
        out.append("python -m serving " + " ".join(
            f"--model {m}={os.path.join(root, m)}" for m in summary.served))
    if summary.trainers:
        runs = ",".join(f"{n}:{summary.nodes[n].outputs['model_run'][0]}"
                        for n, _ in summary.trainers)
        out.append(f"tensorboard --logdir_spec {runs}")
    return out


def render(summary: RunSummary, page: Optional[str] = None) -> str:
    """The summary as console text; ``page`` is the results page's path, if written."""
    config, nodes = summary.config, summary.nodes
    lines = [f"Run root: {os.path.abspath(config.run_root)}",
             f"  artefacts:   {config.pipeline_root}",
             f"  ML Metadata: {config.metadata_path}"]
    lines += _data_lines(summary)
    for node, variant in summary.trainers:
        lines += [f"{node} ({variant}) [{nodes[node].state}] -> {nodes[node].outputs['model'][0]}",
                  f"  TensorBoard: {nodes[node].outputs['model_run'][0]}"]
    if nodes_lib.INDEX in nodes:
        index = nodes[nodes_lib.INDEX]
        props = index.properties[index_executor.SCANN_MODEL_KEY]
        recall = {k: v for k, v in props.items() if k.startswith("recall_at_")}
        scann_uri = index.outputs[index_executor.SCANN_MODEL_KEY][0]
        lines.append(f"IndexBuilder [{index.state}] -> {scann_uri} "
                     f"({props.get('items')} items, ScaNN {recall} vs brute force)")
    lines += _evaluation_lines(summary)
    if summary.served:
        lines.append(f"Serving folders (newest pushed versions): {config.serving_root} "
                     f"{summary.served}")
    lines += [f"  start: {c}" for c in commands(summary)]
    lines += _time_lines(summary)
    if page:
        lines.append(f"results page: {page}")
    return "\n".join(lines)


def _data_lines(summary: RunSummary) -> list[str]:
    nodes, lines = summary.nodes, []
    for node, label in ((nodes_lib.LOGS_EXAMPLE_GEN, "logs"),
                        (nodes_lib.CATALOG_EXAMPLE_GEN, "catalog")):
        if node in nodes:
            props = nodes[node].properties["examples"]
            span = f" span {props.get('span')}" if label == "logs" and "span" in props else ""
            lines.append(f"Ingested {label}{span}: {props.get(ingest_executor.ROWS_OK, 0)} rows, "
                         f"{step_lines.rejects(props)} [{nodes[node].state}] -> "
                         f"{nodes[node].outputs['examples'][0]}")
    if nodes_lib.JOIN in nodes:
        join = nodes[nodes_lib.JOIN]
        props = join.properties[join_executor.EXAMPLES_KEY]
        lines += [
            f"Joined [{join.state}] -> {join.outputs[join_executor.EXAMPLES_KEY][0]}",
            f"  items (catalog): {split_line(props, features.CATALOG_SPLIT)}",
            f"  pairs train:     {split_line(props, features.TRAIN_SPLIT)}",
            f"  pairs eval:      {split_line(props, features.EVAL_SPLIT)}",
            "  log rows rejected, item not in catalog: "
            f"{props.get(join_executor.REJECTED_UNKNOWN, 0)}",
            f"  (head = top {summary.config.spec.head_fraction:.0%} of items seen in training by "
            "frequency; cold = unseen)"]
        if summary.config.spec.cold_item_percent:
            lines.append(f"  training rows moved to eval, {summary.config.spec.cold_item_percent}% "
                         f"of items held out: {props.get(beam_join.MOVED_COLD, 0)}")
    if nodes_lib.TRANSFORM in nodes:
        sizes = ", ".join(f"{k} {v}" for k, v in summary.vocabularies.items())
        lines += [f"Transform [{nodes[nodes_lib.TRANSFORM].state}] -> "
                  f"{nodes[nodes_lib.TRANSFORM].outputs['transform_graph'][0]}",
                  f"  vocabularies: {sizes}"]
    if summary.correlation is not None:
        from components.correlation import report as correlation_report

        doc, record = summary.correlation, nodes[nodes_lib.CORRELATION]
        lines += [f"Feature correlations [{record.state}] -> "
                  f"{record.outputs['correlation'][0]}",
                  *(f"  heat map: {png}" for png in summary.correlation_pngs),
                  f"  CFM groups ({doc['weighting']} weighting, masked set of "
                  f"{doc['n_masked']} of {len(doc['features'])} features):"]
        lines += [f"    {line}" for line in correlation_report.describe_groups(doc)]
    return lines


def _evaluation_lines(summary: RunSummary) -> list[str]:
    evaluation = summary.evaluation
    if evaluation is None:
        return []
    from components.evaluate import report as eval_report

    lines = [f"Evaluator [{evaluation.record.state}] -> {evaluation.uri}",
             f"  {verdict_line(evaluation)}"]
    lines += [f"  {row}" for row in eval_report.table(evaluation.metrics)]
    lines += [push_line(node, props) for node, props in summary.pushes.items()]
    return lines


def _time_lines(summary: RunSummary) -> list[str]:
    if not summary.steps:
        return []
    total = sum(s.seconds for s in summary.steps)
    slowest = sorted(summary.steps, key=lambda s: -s.seconds)[:5]
    return [f"Step times (ML Metadata): {total:.0f} s in steps, {summary.wall_seconds:.0f} s "
            f"from first start to last end; slowest: " + ", ".join(
                f"{s.node_id} {s.seconds:.0f} s" for s in slowest)]
