"""Each step's wall time (from ML Metadata) and key figure, for progress lines and summary."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import tensorflow as tf

from components.index import executor as index_executor
from components.ingest import executor as ingest_executor
from components.join import executor as join_executor
from pipeline import nodes
from pipeline.config import PipelineConfig
from pipeline.report import curves, records
from transforms import features, tables


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Wall time of a node's latest execution, from its ML Metadata record.

    Attributes:
      node_id: the component id.
      state: the execution's last known state (``COMPLETE``, ``CACHED``, ...).
      start_ms: creation time of the execution (ms since the epoch).
      end_ms: its last update (ms since the epoch).
    """

    node_id: str
    state: str
    start_ms: int
    end_ms: int

    @property
    def seconds(self) -> float:
        """Wall time of the step in seconds."""
        return (self.end_ms - self.start_ms) / 1000.0


def step_time(store: object, pipeline_name: str, node_id: str) -> Optional[StepTime]:
    """The latest execution's times, or None if the node never ran."""
    done = records.executions(store, pipeline_name, node_id)
    if not done:
        return None
    execution = done[-1]
    state = records.metadata_store_pb2.Execution.State.Name(execution.last_known_state)
    return StepTime(node_id, state, execution.create_time_since_epoch,
                    execution.last_update_time_since_epoch)


def rejects(props: dict[str, object]) -> str:
    """``N rejected (malformed_row a, duplicate_item b)`` of an ingested table."""
    bad = {k: props.get(k, 0) for k in (tables.MALFORMED, tables.DUPLICATE)}
    detail = ", ".join(f"{k} {v}" for k, v in bad.items() if v)
    return f"{sum(bad.values())} rejected" + (f" ({detail})" if detail else "")


def vocab_sizes(transform_graph: str) -> dict[str, int]:
    """Vocabulary name -> number of entries, from the Transform graph's assets."""
    assets = os.path.join(transform_graph, "transform_fn", "assets")
    sizes = {}
    for name in sorted(tf.io.gfile.listdir(assets)) if tf.io.gfile.exists(assets) else []:
        with tf.io.gfile.GFile(os.path.join(assets, name)) as f:
            sizes[name.removeprefix("vocab_")] = sum(1 for _ in f)
    return sizes


def final_loss(model_run: str) -> Optional[float]:
    """The last epoch's training loss in a Trainer's TensorBoard logs."""
    points = curves.scalars(model_run).get("epoch_loss")
    return points[-1][1] if points else None


def key_figure(record: records.NodeRecord, config: PipelineConfig) -> str:
    """The one figure worth a glance when ``record``'s step ends ('' if none)."""
    node, props = record.node_id, record.properties
    if node.endswith("ExampleGen"):
        examples = props["examples"]
        return f"{examples.get(ingest_executor.ROWS_OK, 0)} rows, {rejects(examples)}"
    if node == nodes.JOIN:
        p = props[join_executor.EXAMPLES_KEY]
        return (f"train {p.get(features.TRAIN_SPLIT, 0)}, eval {p.get(features.EVAL_SPLIT, 0)}"
                f", catalog {p.get(features.CATALOG_SPLIT, 0)} rows; "
                f"{p.get(join_executor.REJECTED_UNKNOWN, 0)} log rows with an unknown item")
    if node == nodes.TRANSFORM:
        sizes = vocab_sizes(record.outputs["transform_graph"][0])
        return "vocabularies " + ", ".join(f"{k} {v}" for k, v in sizes.items())
    if node == nodes.CORRELATION:
        from components.correlation import report as correlation_report

        doc = correlation_report.read(record.outputs["correlation"][0])
        return f"{len(doc['groups'])} CFM groups over {len(doc['features'])} features"
    if node.startswith(nodes.trainer("", first=True)):
        loss = final_loss(record.outputs["model_run"][0])
        steps = config.hparams.train_steps
        return f"loss {loss:.4f} after {steps} steps" if loss is not None else f"{steps} steps"
    if node == nodes.INDEX:
        scann = props[index_executor.SCANN_MODEL_KEY]
        recall = {k: v for k, v in scann.items() if k.startswith("recall_at_")}
        if not recall:
            return "ScaNN recall unmeasured (no eval queries)"
        return ", ".join(f"ScaNN {k} {v:.3f}" for k, v in recall.items()) + " vs brute force"
    if node == nodes.EVALUATOR:
        return _evaluator_figure(record)
    if node.startswith(nodes.pusher("")):
        p = props.get("pushed_model", {})
        return f"pushed version {p.get('pushed_version')}" if p.get("pushed") else "not pushed"
    return ""


def _evaluator_figure(record: records.NodeRecord) -> str:
    from components.evaluate import report as eval_report
    from components.evaluate.config import GATE_METRIC

    uri = record.outputs["evaluation"][0]
    overall = eval_report.metrics_by_slice(uri).get(eval_report.OVERALL, {})
    blessed = "BLESSED" if record.properties.get("blessing", {}).get("blessed") else \
        "NOT BLESSED"
    value = overall.get(GATE_METRIC)
    return (f"{GATE_METRIC} {value:.4f}, " if value is not None else "") + blessed


def describe(config: PipelineConfig, node_id: str) -> tuple[Optional[float], str, str]:
    """(seconds, state, key figure) of ``node_id``'s latest execution, for a progress line.

    A figure that cannot be read is shown as such (with the reason), so a
    progress line never stops the run.
    """
    store = records.open_store(config.metadata_path)
    timing = step_time(store, config.pipeline_name, node_id)
    if timing is None:
        return None, "-", ""
    record = records.latest(store, config.pipeline_name, node_id)
    try:
        figure = key_figure(record, config) if record else ""
    except Exception as e:  # noqa: BLE001 (shown on the console, the run goes on)
        figure = f"(figure unavailable: {type(e).__name__}: {e})"
    return timing.seconds, timing.state, figure
