"""Argument parsing for ``python -m pipeline``; the only place reading flags."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Optional, Sequence

from components.correlation.estimator import MEASURES
from components.correlation.settings import CorrelationSettings
from components.evaluate.config import EvalSettings
from components.trainer import hparams as hparams_lib
from pipeline import options
from pipeline.config import BEAM_PRESETS, RUNNERS, PipelineConfig
from pipeline.report import console
from transforms.spec import DatasetSpec, SpecError, load_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline on a dataset spec")
    run.add_argument("--dataset", required=True, help="path of the dataset spec (YAML)")
    run.add_argument("--run-root", default=None,
                     help="folder for every output (default: runs/<dataset name>)")
    run.add_argument("--runner", choices=RUNNERS, default=RUNNERS[0],
                     help="BeamDagRunner (default) or LocalDagRunner")
    run.add_argument("--beam-arg", action="append", default=None, metavar="FLAG",
                     help="a Beam pipeline flag, repeatable (default: DirectRunner, "
                          "one process per core)")
    run.add_argument("--beam-preset", choices=BEAM_PRESETS, default=None,
                     help="where the Beam steps run: direct (DirectRunner, one process per "
                          "core), in-memory (one process), portable-local (Beam's portable "
                          "runner with SDK worker processes, the Fn API path of Flink, Spark "
                          "and Dataflow); default: by input size. --beam-arg flags follow "
                          "the preset's")
    run.add_argument("--trainer-workers", type=int, default=None, metavar="N",
                     help="train with N local worker processes (MultiWorkerMirroredStrategy "
                          "over loopback; hparams.workers)")
    run.add_argument("--span", type=int, default=None, help="ingest this log span "
                     "(default: the latest)")
    run.add_argument("--all-spans", action="store_true",
                     help="ingest every log span in order, one run per span")
    run.add_argument("--no-cache", action="store_true", help="re-execute every step")
    run.add_argument("--hparams", default=None, metavar="JSON|FILE",
                     help="Trainer hyper-parameters: a JSON object or a JSON/YAML file")
    run.add_argument("--data-only", action="store_true",
                     help="run the data half only (no Trainer)")
    run.add_argument("--variants", default=None,
                     help="comma-separated Trainer variants; the first is the main model "
                          "(default: the --hparams variant, else "
                          f"{hparams_lib.DEFAULT_VARIANT})")
    run.add_argument("--eval-slice", action="append", default=None, metavar="FEATURE",
                     help="item feature to slice evaluation metrics by (repeatable; "
                          "head/tail/cold slices are always there)")
    run.add_argument("--min-recall-at-50", type=float, default=EvalSettings.min_recall_at_50,
                     help="blessing floor on overall Recall@50 (default: %(default)s)")
    run.add_argument("--max-recall-drop", type=float, default=EvalSettings.max_recall_drop,
                     help="largest allowed absolute drop of overall Recall@50 against the "
                          "latest blessed model (default: %(default)s)")
    run.add_argument("--correlation-measure", choices=MEASURES, default=CorrelationSettings.measure,
                     help="dependence measure forming the CFM groups: adjusted MI "
                          "(chance-corrected, default) or plug-in NMI")
    run.add_argument("--correlation-sample-items", type=int,
                     default=CorrelationSettings.sample_items, metavar="N",
                     help="FeatureCorrelation measures a larger catalog on a fixed hash "
                          "sample of about N items; 0: every item (default: %(default)s)")
    run.add_argument("--verbose", action="store_true",
                     help="stream the full log (TensorFlow, Beam, absl) to the console too")
    ml = sub.add_parser("movielens", help="fetch MovieLens-1M and write it as a dataset")
    ml.add_argument("--out", default="data/movielens-1m")
    ml.add_argument("--cache", default="data/cache")
    syn = sub.add_parser("synthetic", help="write a synthetic power-law dataset")
    syn.add_argument("--out", required=True)
    syn.add_argument("--items", type=int, default=1000)
    syn.add_argument("--pairs", type=int, default=20000)
    syn.add_argument("--spans", type=int, default=1)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--long-tail", action="store_true",
                     help="with --rich: communities and creator / tags features whose "
                          "vocabularies grow with the catalog")
    syn.add_argument("--rich", action="store_true",
                     help="the feature-rich latent-factor benchmark (pipeline/datasets/rich.py; "
                          "--spans is ignored)")
    return parser


def _config(**kwargs: object) -> PipelineConfig:
    """Builds the PipelineConfig; its validation errors exit like spec errors."""
    try:
        return PipelineConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(str(e)) from e


def _eval_settings(args: argparse.Namespace) -> EvalSettings:
    try:
        return EvalSettings(min_recall_at_50=args.min_recall_at_50,
                            max_recall_drop=args.max_recall_drop,
                            slice_features=tuple(args.eval_slice or ()))
    except ValueError as e:
        raise SpecError(str(e)) from e


def _configs(args: argparse.Namespace, spec: DatasetSpec, run_root: str,
             pool_address: Optional[str] = None) -> list[PipelineConfig]:
    """One checked configuration per span to run (``--all-spans``: every span, in order)."""
    from pipeline import preflight
    from pipeline.config import local_beam_args, preset_beam_args

    if args.beam_preset is None:
        beam_args = tuple(args.beam_arg or local_beam_args(preflight.input_bytes(spec)))
    else:
        beam_args = preset_beam_args(args.beam_preset, pool_address) + tuple(args.beam_arg or ())
    spans: list[Optional[int]] = [args.span]
    if args.all_spans:
        spans = list(preflight.spans(spec.logs)) or [None]
    hparams, variants = options.trainer_settings(options.load_hparams(args.hparams),
                                                 options.parse_variants(args.variants),
                                                 workers=args.trainer_workers)
    configs = []
    for span in spans:
        preflight.check(spec, span)
        configs.append(_config(
            spec=spec, run_root=run_root,
            beam_pipeline_args=beam_args,
            enable_cache=not args.no_cache, span=span, hparams=hparams,
            eval_settings=_eval_settings(args),
            correlation=CorrelationSettings(measure=args.correlation_measure,
                                            sample_items=args.correlation_sample_items),
            train_variants=() if args.data_only else variants))
    return configs


def _run(args: argparse.Namespace) -> int:
    """``run``: the pipeline with a quiet console (see :mod:`pipeline.job`)."""
    from pipeline import job, worker_pools

    spec = load_spec(args.dataset)
    run_root = args.run_root or f"runs/{spec.name}"
    log_path = console.log_path(run_root)
    with contextlib.ExitStack() as stack:
        def configs() -> list[PipelineConfig]:
            address = None
            if args.beam_preset == worker_pools.PORTABLE_LOCAL:     # stopped after the run
                address = stack.enter_context(worker_pools.started(
                    os.path.splitext(log_path)[0] + "-beam-workers.log"))
            return _configs(args, spec, run_root, address)

        return job.run(configs, args.runner, log_path, args.verbose)


def _write_dataset(args: argparse.Namespace) -> str:
    """``movielens`` / ``synthetic``: writes the dataset; the path of its spec."""
    if args.command == "movielens":
        from pipeline.datasets import movielens
        return movielens.prepare(args.out, args.cache)
    if args.rich:
        from pipeline.datasets import rich
        return rich.generate(rich.RichConfig(n_items=args.items, n_pairs=args.pairs,
                                             seed=args.seed, long_tail=args.long_tail), args.out)
    from pipeline.datasets import synthetic
    return synthetic.generate(synthetic.SyntheticConfig(
        n_items=args.items, n_pairs=args.pairs, spans=args.spans, seed=args.seed), args.out)


def main(argv: Sequence[str]) -> int:
    """Runs one command; bad specs and bad input exit 2 with the reason."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        spec_path = _write_dataset(args)
        from pipeline.datasets import stats

        print(spec_path)
        print(stats.describe(stats.of_spec(spec_path)))
        return 0
    except Exception as e:  # noqa: BLE001 (re-raised unless it is bad input)
        from pipeline import job

        if job.reason(e)[0] not in job.USER_ERRORS:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
