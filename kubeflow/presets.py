"""Beam runner presets: the same pipeline's Beam steps on other engines.

Each preset is a list of ``beam_pipeline_args`` templates; ``{name}`` fields
are filled from :func:`beam_args`'s keyword arguments. Local runs keep the
DirectRunner with one process per core.
"""

from __future__ import annotations

from typing import Sequence

from pipeline.config import LOCAL_BEAM_ARGS

PRESETS: dict[str, tuple[str, ...]] = {
    "direct": LOCAL_BEAM_ARGS,
    # Google Cloud Dataflow: workers run the pipeline image so our code imports.
    "dataflow": (
        "--runner=DataflowRunner",
        "--project={project}",
        "--region={region}",
        "--temp_location={pipeline_root}/beam-tmp",
        "--sdk_container_image={image}",
        "--experiments=use_runner_v2",
    ),
    # Apache Flink through Beam's portable runner (a Flink job server).
    "flink": (
        "--runner=PortableRunner",
        "--job_endpoint={job_endpoint}",
        "--environment_type=DOCKER",
        "--environment_config={image}",
        "--parallelism={parallelism}",
    ),
    # Apache Spark through Beam's portable runner (a Spark job server).
    "spark": (
        "--runner=PortableRunner",
        "--job_endpoint={job_endpoint}",
        "--environment_type=DOCKER",
        "--environment_config={image}",
    ),
}


def beam_args(preset: str, extra: Sequence[str] = (), **values: object) -> tuple[str, ...]:
    """The ``beam_pipeline_args`` of ``preset`` with its fields filled, then ``extra``.

    Raises:
      ValueError: unknown preset, or a field the preset needs is missing.
    """
    if preset not in PRESETS:
        raise ValueError(f"beam preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    out = []
    for template in PRESETS[preset]:
        try:
            out.append(template.format(**values))
        except KeyError as e:
            raise ValueError(f"beam preset {preset!r} needs --{e.args[0].replace('_', '-')} "
                             f"(for {template!r}).") from e
    return tuple(out) + tuple(extra)
