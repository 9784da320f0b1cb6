"""Compiles ``create_pipeline`` for Kubeflow Pipelines v2 / Vertex AI Pipelines.

``python -m kubeflow.compile --dataset SPEC --image IMAGE --pipeline-root gs://...``
writes the pipeline job JSON (and, with ``--ir-yaml``, the pipeline spec as
IR YAML). Before compiling, every component's executor class and every
dotted-path function (``run_fn``, ``preprocessing_fn``) is imported, so a
missing module fails here with the component and path named, not on the
cluster.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Optional, Sequence

import yaml

from components.trainer import hparams as hparams_lib
from kubeflow import presets
from pipeline import options
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from transforms.spec import DatasetSpec, is_url, load_spec

DOTTED_PATH_PROPERTIES = ("run_fn", "preprocessing_fn", "trainer_fn", "module_path")


class NotImportableError(ImportError):
    """A component's code cannot be imported by its module path."""


def local_data_paths(spec: DatasetSpec) -> list[str]:
    """The spec's data and schema paths that are folders of this machine, not URLs."""
    paths = [spec.catalog.base, spec.logs.base, spec.logs_schema, spec.catalog_schema]
    return [p for p in paths if p and not is_url(p)]


def check_data_paths(spec: DatasetSpec, pipeline_root: str, mounted: bool) -> None:
    """Refuses a remote pipeline root with local data paths, unless they are mounted.

    Raises:
      ValueError: naming the local paths and the two fixes.
    """
    local = local_data_paths(spec)
    if not is_url(pipeline_root) or not local or mounted:
        return
    raise ValueError(
        f"the pipeline root {pipeline_root!r} is remote but the dataset spec reads local "
        f"path(s) {local}: the job would not find them on the cluster. Copy the data to "
        "the cluster's storage (e.g. gsutil -m cp -r) and point the spec's paths there, or "
        "pass --data-mounted if the image mounts them at these same paths.")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_importable(pipeline: Any) -> list[str]:
    """Imports every executor class and dotted-path function; returns the paths.

    Raises:
      NotImportableError: naming the component, the path and the cause.
    """
    checked = []
    for component in pipeline.components:
        paths = []
        executor_class = getattr(component.executor_spec, "executor_class", None)
        if executor_class is not None:
            paths.append(f"{executor_class.__module__}.{executor_class.__qualname__}")
        for key in DOTTED_PATH_PROPERTIES:
            value = component.exec_properties.get(key)
            if isinstance(value, str) and value:
                paths.append(value)
        for path in paths:
            try:
                _import(path)
            except (ImportError, AttributeError, ValueError) as e:
                raise NotImportableError(
                    f"component {component.id}: {path!r} is not importable ({e}). Install "
                    "the project into the image (see kubeflow/Dockerfile) or fix the path."
                ) from e
            checked.append(path)
    return checked


def compile_pipeline(config: PipelineConfig, image: str, output: str,
                     ir_yaml: Optional[str] = None) -> dict[str, Any]:
    """Writes the PipelineJob JSON to ``output`` (and IR YAML); returns the JSON dict."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    pipeline = create_pipeline(config)
    check_importable(pipeline)
    runner = v2.KubeflowV2DagRunner(
        config=v2.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output))
    job = runner.run(pipeline, write_out=True)
    if ir_yaml:
        with open(ir_yaml, "w", encoding="utf-8") as f:
            yaml.safe_dump(job["pipelineSpec"], f, sort_keys=True)
    return job


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kubeflow.compile", description=__doc__)
    parser.add_argument("--dataset", required=True, help="dataset spec (paths may be gs://)")
    parser.add_argument("--image", required=True, help="container image with the project")
    parser.add_argument("--pipeline-root", required=True, help="e.g. gs://bucket/ssl4rec")
    parser.add_argument("--output", default="pipeline.json")
    parser.add_argument("--ir-yaml", default=None, help="also write the IR YAML here")
    parser.add_argument("--beam-preset", default="direct",
                        choices=sorted(presets.PRESETS))
    parser.add_argument("--project", default=None)
    parser.add_argument("--region", default=None)
    parser.add_argument("--job-endpoint", default=None)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--beam-arg", action="append", default=[], metavar="FLAG")
    parser.add_argument("--hparams", default=None, metavar="JSON|FILE",
                        help="Trainer hyper-parameters: a JSON object or a JSON/YAML file")
    parser.add_argument("--strategy", default=None,
                        choices=hparams_lib.STRATEGIES)
    parser.add_argument("--variants", default=None,
                        help="comma-separated Trainer variants; the first is the main model "
                             "(default: the --hparams variant, else "
                             f"{hparams_lib.DEFAULT_VARIANT})")
    parser.add_argument("--data-mounted", action="store_true",
                        help="the spec's local data paths exist inside the image / pods")
    return parser


def main(argv: Sequence[str]) -> int:
    """Compiles; exit code 2 with the reason on a bad spec, preset or import."""
    args = _parser().parse_args(argv)
    try:
        values = {k: v for k, v in {
            "project": args.project, "region": args.region, "job_endpoint": args.job_endpoint,
            "parallelism": args.parallelism, "image": args.image,
            "pipeline_root": args.pipeline_root.rstrip("/")}.items() if v is not None}
        hparams, variants = options.trainer_settings(
            options.load_hparams(args.hparams), options.parse_variants(args.variants),
            strategy=args.strategy)
        spec = load_spec(args.dataset)
        check_data_paths(spec, args.pipeline_root, args.data_mounted)
        config = PipelineConfig(
            spec=spec, run_root=args.pipeline_root,
            beam_pipeline_args=presets.beam_args(args.beam_preset, args.beam_arg, **values),
            hparams=hparams, train_variants=variants,
            span_window=False)
        if spec.has_spans and spec.train_spans > 1:
            print(f"warning: Kubeflow v2 has no span-range resolver; the compiled pipeline "
                  f"joins the newest log span only (the spec asks for {spec.train_spans}).",
                  file=sys.stderr)
        compile_pipeline(config, args.image, args.output, args.ir_yaml)
    except (TypeError, ValueError, NotImportableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}" + (f" and {args.ir_yaml}" if args.ir_yaml else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
