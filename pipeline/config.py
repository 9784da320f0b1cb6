"""The pipeline's configuration: one frozen dataclass, validated once."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from components import worker_exit
from components.correlation.settings import CorrelationSettings
from components.evaluate.config import EvalSettings
from components.index.search import IndexConfig
from components.join import DEFAULT_SIDE_INPUT_MAX_ITEMS
from components.trainer import hparams
from components.trainer.hparams import DEFAULT_VARIANT
from pipeline import worker_pools
from transforms.spec import DatasetSpec, is_url

#: Local orchestrators: TFX's BeamDagRunner (default) and LocalDagRunner.
RUNNERS = ("beam", "local")

# DirectRunner defaults: one process per core. Other runners (Dataflow, Flink,
# Spark) are chosen by passing their flags instead.
# Every worker imports components.worker_exit, which frees TF objects before exit.
LOCAL_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0",
                   worker_exit.BEAM_PLUGIN_FLAG)
IN_MEMORY_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
#: Local runs without Beam flags: inputs (catalog plus every log span) of at most
#: this many bytes run in one process, since starting a worker per core for every
#: Beam step costs more than the second core gains (MovieLens-1M, 14 MB:
#: benchmarks/results/data_half.md); larger inputs get one process per core.
IN_MEMORY_MAX_INPUT_BYTES = 32 * 2**20
#: Added to JoinExamples' flags on every input size (ignored by other runners):
#: the side-input join holds the catalog in each worker's memory, and one
#: in-process worker keeps the 1M-item join at about half the memory of one
#: worker per core, at about a fifth more time (benchmarks/results/data_half.md).
JOIN_BEAM_ARGS = IN_MEMORY_BEAM_ARGS
#: Added to the Evaluator's flags on every input size (ignored by other
#: runners): the model's products already use every core in one process,
#: and a worker per core holds a copy of the model each. With a million
#: items, the Evaluator alone took 133 s at 3.0 GiB in one process against
#: 148 s at 6.4 GiB with a worker per core (README, "A million items").
EVALUATOR_BEAM_ARGS = IN_MEMORY_BEAM_ARGS


def local_beam_args(input_bytes: int) -> tuple[str, ...]:
    """DirectRunner flags for local inputs of ``input_bytes`` bytes (see above)."""
    return IN_MEMORY_BEAM_ARGS if input_bytes <= IN_MEMORY_MAX_INPUT_BYTES else LOCAL_BEAM_ARGS


#: ``--beam-preset`` of local runs: the DirectRunner with one process per core,
#: in one process, or Beam's portable runner with external SDK worker
#: processes (:mod:`pipeline.worker_pools`).
BEAM_PRESETS = ("direct", "in-memory", worker_pools.PORTABLE_LOCAL)


def preset_beam_args(preset: str, pool_address: Optional[str] = None) -> tuple[str, ...]:
    """The Beam flags of a local ``preset``; ``portable-local`` needs the pool's address."""
    if preset == worker_pools.PORTABLE_LOCAL:
        if not pool_address:
            raise ValueError(f"beam preset {preset!r} needs a running worker pool's address.")
        return worker_pools.portable_args(pool_address)
    if preset not in BEAM_PRESETS:
        raise ValueError(f"beam preset must be one of {BEAM_PRESETS}, got {preset!r}.")
    return LOCAL_BEAM_ARGS if preset == "direct" else IN_MEMORY_BEAM_ARGS


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything ``create_pipeline`` needs.

    Attributes:
      spec: the validated dataset spec.
      run_root: folder holding every output of this pipeline (artefacts,
        ML Metadata, logs); re-running with the same root reuses cached steps.
      pipeline_name: name recorded in ML Metadata.
      beam_pipeline_args: flags for every Beam step (runner choice).
      enable_cache: reuse outputs of steps whose inputs did not change.
      span: ingest this log span (None: the latest span).
      correlation: FeatureCorrelation's weighting, hashing limit and
        grouping measure (validated by ``CorrelationSettings``).
      join_side_input_max_items: JoinExamples holds a catalog of at most
        this many rows in each worker's memory (a side input) instead of
        joining by keyed shuffles; 0 always shuffles. Validated here, once.
      hparams: Trainer hyper-parameters, validated once where they enter
        (``components.trainer.hparams.from_dict`` in the CLI / compiler); each
        Trainer gets them with its variant.
      train_variants: one Trainer per variant; the first is ``Trainer``, the
        others ``Trainer_<variant>`` (baselines and ablations side by side);
        empty: the data half only.
      index_config: ScaNN settings and recall floor of the IndexBuilder.
      eval_settings: Evaluator slices and blessing thresholds.
      model_name: serving name; exports are pushed to
        ``<run_root>/serving/<model_name>{,_bruteforce,_query}/<version>/``.
      span_window: join the latest ``train_spans`` log spans through a
        span-range resolver; False joins the newest span only (Kubeflow v2
        supports no span-range resolver).
    """

    spec: DatasetSpec
    run_root: str
    pipeline_name: str = "ssl4rec"
    beam_pipeline_args: tuple[str, ...] = LOCAL_BEAM_ARGS
    enable_cache: bool = True
    span: Optional[int] = None
    correlation: CorrelationSettings = dataclasses.field(default_factory=CorrelationSettings)
    join_side_input_max_items: int = DEFAULT_SIDE_INPUT_MAX_ITEMS
    hparams: hparams.HParams = dataclasses.field(default_factory=hparams.HParams)
    train_variants: tuple[str, ...] = (DEFAULT_VARIANT,)
    span_window: bool = True
    index_config: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    eval_settings: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    model_name: str = "ssl4rec"

    def __post_init__(self) -> None:
        """Validates values that have a range."""
        if not self.run_root:
            raise ValueError("run_root must be a folder path, got an empty string.")
        if self.span is not None and self.span < 0:
            raise ValueError(f"span must be >= 0, got {self.span}.")
        if not isinstance(self.hparams, hparams.HParams):
            raise TypeError("hparams: expected components.trainer.hparams.HParams (build it "
                            f"with hparams.from_dict), got {type(self.hparams).__name__}.")
        for variant in self.train_variants:
            if variant not in hparams.VARIANTS:
                raise ValueError(f"train_variants: {variant!r} is not one of {hparams.VARIANTS}.")
        names = [f.name for f in self.spec.item_features]
        unknown = sorted(set(self.eval_settings.slice_features) - set(names))
        if unknown:
            raise ValueError(f"eval slice features {unknown} are not item features of "
                             f"{self.spec.name!r}; choose from {names}.")
        if self.join_side_input_max_items < 0:
            raise ValueError(f"join_side_input_max_items must be >= 0, got "
                             f"{self.join_side_input_max_items}.")

    def trainer_hparams(self, variant: str) -> hparams.HParams:
        """The hyper-parameters of the Trainer of ``variant``."""
        return dataclasses.replace(self.hparams, variant=variant)

    @property
    def is_remote(self) -> bool:
        """Whether the run root is a URL (a cluster's storage) rather than a folder."""
        return is_url(self.run_root)

    @property
    def _root(self) -> str:
        return self.run_root if self.is_remote else os.path.abspath(self.run_root)

    @property
    def serving_root(self) -> str:
        """Folder the Pushers push to (one sub-folder per served model)."""
        return os.path.join(self._root, "serving")

    @property
    def pipeline_root(self) -> str:
        """Folder of the pipeline's artefacts (a URL such as gs://... stays a URL)."""
        return os.path.join(self._root, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        """SQLite ML Metadata database of local runs."""
        return os.path.join(self._root, "metadata.sqlite")
