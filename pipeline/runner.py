"""Local runners: BeamDagRunner (default) or LocalDagRunner, SQLite ML Metadata."""

from __future__ import annotations

import os

from pipeline.config import RUNNERS, PipelineConfig
from pipeline.pipeline import create_pipeline


def run(config: PipelineConfig, runner: str = "beam") -> None:
    """Runs the pipeline of ``config`` to completion with the chosen runner."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}.")
    os.makedirs(config.run_root, exist_ok=True)
    pipeline = create_pipeline(config)
    if runner == "beam":
        from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
        BeamDagRunner().run(pipeline)
    else:
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner
        LocalDagRunner().run(pipeline)
