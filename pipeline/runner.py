"""Local runners: BeamDagRunner (default) or LocalDagRunner, SQLite ML Metadata.

TFX's Beam executors package TFX itself (``setup.py sdist`` of the installed
TFX, in a new temporary folder, about 50 MB of copies and 1-2 s each) for
every Beam step whose flags name no package or container, so that remote
workers can import it. Workers on this machine run this environment already:
direct-runner workers, and the portable runner's EXTERNAL workers (a
worker pool such as ``--beam-preset portable-local`` starts; they install
no staged package) and LOOPBACK ones (in the submitting process). For
those, :func:`local_workers_need_no_package` skips the packaging; flags for
any other runner or environment (Dataflow, Flink, Spark, containers,
PROCESS workers, which install staged packages) keep TFX's behaviour.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

from pipeline.config import RUNNERS, PipelineConfig
from pipeline.pipeline import create_pipeline

#: Runners whose workers are processes of this machine's environment.
LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
#: Portable-runner environments that start workers from this environment.
LOCAL_ENVIRONMENTS = ("EXTERNAL", "LOOPBACK")


def workers_share_this_environment(beam_args: Sequence[str]) -> bool:
    """Whether Beam steps with ``beam_args`` run their workers from this Python environment."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(flags=list(beam_args)).get_all_options()
    runner = options.get("runner") or "DirectRunner"
    runner = runner.rsplit(".", 1)[-1]
    if runner in LOCAL_RUNNERS:
        return True
    if runner == "PortableRunner":
        return (options.get("environment_type") or "").upper() in LOCAL_ENVIRONMENTS
    return False


@contextlib.contextmanager
def local_workers_need_no_package() -> Iterator[None]:
    """For the block: Beam steps whose workers share this environment skip TFX's packaging."""
    from tfx.utils import dependency_utils

    original = dependency_utils.make_beam_dependency_flags

    def flags(beam_pipeline_args: list[str]) -> list[str]:
        if workers_share_this_environment(beam_pipeline_args):
            return beam_pipeline_args
        return original(beam_pipeline_args)

    dependency_utils.make_beam_dependency_flags = flags
    try:
        yield
    finally:
        dependency_utils.make_beam_dependency_flags = original


def run(config: PipelineConfig, runner: str = "beam") -> None:
    """Runs the pipeline of ``config`` to completion with the chosen runner."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}.")
    os.makedirs(config.run_root, exist_ok=True)
    pipeline = create_pipeline(config)
    with local_workers_need_no_package():
        if runner == "beam":
            from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
            BeamDagRunner().run(pipeline)
        else:
            from tfx.orchestration.local.local_dag_runner import LocalDagRunner
            LocalDagRunner().run(pipeline)
