"""Local runs skip TFX's packaging of itself for workers that share this environment."""

import os
import shutil

import pytest
from tfx.components.statistics_gen import executor as statistics_executor
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.utils import dependency_utils

from pipeline import runner, worker_pools
from pipeline.config import IN_MEMORY_BEAM_ARGS, LOCAL_BEAM_ARGS

REMOTE = ("--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t")


@pytest.mark.parametrize("args, local", [
    ((), True),
    (LOCAL_BEAM_ARGS, True),
    (IN_MEMORY_BEAM_ARGS, True),
    (("--runner=DirectRunner",), True),
    (worker_pools.portable_args("localhost:5000"), True),
    (("--runner=PortableRunner", "--environment_type=LOOPBACK"), True),
    (("--runner=PortableRunner", "--environment_type=PROCESS"), False),
    (("--runner=PortableRunner", "--environment_type=DOCKER"), False),
    (("--runner=FlinkRunner",), False),
    (REMOTE, False),
])
def test_which_workers_share_this_environment(args, local):
    assert runner.workers_share_this_environment(args) is local


def _executor_args(beam_args) -> list[str]:
    executor = statistics_executor.Executor(
        BaseBeamExecutor.Context(beam_pipeline_args=list(beam_args), tmp_dir="/tmp"))
    return list(executor._beam_pipeline_args)      # noqa: SLF001 (what TFX's executor will use)


def test_a_local_step_builds_no_package_and_a_remote_one_keeps_tfx_packaging():
    original = dependency_utils.make_beam_dependency_flags
    with runner.local_workers_need_no_package():
        local = _executor_args(LOCAL_BEAM_ARGS)
        remote = _executor_args(REMOTE)
    assert dependency_utils.make_beam_dependency_flags is original      # restored
    assert not [a for a in local if a.startswith("--extra_package")]
    assert local[:len(LOCAL_BEAM_ARGS)] == list(LOCAL_BEAM_ARGS)
    packages = [a.split("=", 1)[1] for a in remote if a.startswith("--extra_package=")]
    assert len(packages) == 1 and os.path.isfile(packages[0])           # TFX's sdist, as before
    shutil.rmtree(packages[0].split("/build/")[0], ignore_errors=True)


def test_the_join_and_the_evaluator_run_in_one_process_and_the_other_steps_per_core(tmp_path):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from pipeline import nodes
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline
    from tests.conftest import tiny_spec

    config = PipelineConfig(spec=tiny_spec(str(tmp_path)), run_root=str(tmp_path / "run"),
                            beam_pipeline_args=LOCAL_BEAM_ARGS)
    modes = {}
    for component in create_pipeline(config).components:
        args = getattr(component.executor_spec, "beam_pipeline_args", None)
        if args is not None:         # TFX puts the pipeline's flags first, the step's after
            direct = PipelineOptions(list(args)).view_as(DirectOptions)
            modes[component.id] = (direct.direct_running_mode, direct.direct_num_workers)
    assert modes[nodes.JOIN] == modes[nodes.EVALUATOR] == ("in_memory", 1)
    assert modes[nodes.TRANSFORM] == ("multi_processing", 0)
