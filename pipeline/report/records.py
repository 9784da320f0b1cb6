"""Reads run records back from ML Metadata: executions and their outputs."""

from __future__ import annotations

import dataclasses
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

DONE_STATES = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """The latest finished execution of one pipeline node.

    Attributes:
      node_id: the component id.
      state: ``COMPLETE`` or ``CACHED``.
      outputs: output key -> URIs of the output artefacts.
      properties: output key -> properties and custom properties of its first
        artefact.
    """

    node_id: str
    state: str
    outputs: dict[str, list[str]]
    properties: dict[str, dict[str, object]]


def open_store(sqlite_path: str) -> metadata_store.MetadataStore:
    """Opens a local SQLite ML Metadata store read-write (it must exist)."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = sqlite_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    return metadata_store.MetadataStore(config)


def _value(value: metadata_store_pb2.Value) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind not in (None, "struct_value", "proto_value") else None


def executions(store: metadata_store.MetadataStore, pipeline_name: str,
               node_id: str) -> list[metadata_store_pb2.Execution]:
    """Every execution of ``node_id``, oldest first."""
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if context is None:
        return []
    return sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)


def latest(store: metadata_store.MetadataStore, pipeline_name: str,
           node_id: str) -> Optional[NodeRecord]:
    """The latest finished execution of ``node_id`` with its outputs, or None."""
    done = [e for e in executions(store, pipeline_name, node_id)
            if e.last_known_state in DONE_STATES]
    if not done:
        return None
    execution = done[-1]
    events = [ev for ev in store.get_events_by_execution_ids([execution.id])
              if ev.type == metadata_store_pb2.Event.OUTPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])}
    outputs: dict[str, list[str]] = {}
    properties: dict[str, dict[str, object]] = {}
    for ev in sorted(events, key=lambda e: e.artifact_id):
        key = ev.path.steps[0].key if ev.path.steps else "output"
        artifact = artifacts[ev.artifact_id]
        outputs.setdefault(key, []).append(artifact.uri)
        values = {k: _value(v) for k, v in artifact.properties.items()}
        values.update({k: _value(v) for k, v in artifact.custom_properties.items()})
        properties.setdefault(key, values)
    state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
    return NodeRecord(node_id, state, outputs, properties)
