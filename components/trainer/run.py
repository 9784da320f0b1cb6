"""The Trainer's ``run_fn`` (by import path: ``components.trainer.run.run_fn``)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras
from absl import logging as absl_logging

from components import worker_exit
from components.correlation import report as correlation_report
from components.trainer import component as trainer_component
from components.trainer import data, export, progress, workers
from components.trainer import hparams as hparams_lib
from components.trainer.model import FeatureLayout, Sampling, TwoTowerSSL
from transforms import features
from transforms.spec import DatasetSpec

#: Log record of :class:`Throughput` (read by benchmarks/scaleout.py).
THROUGHPUT_RECORD = "Trainer throughput after the first epoch, examples/s:"


def feature_layout(spec: DatasetSpec, tf_transform_output: tft.TFTransformOutput) -> FeatureLayout:
    """Tower inputs and vocabulary sizes (vocabulary + OOV buckets)."""
    sizes = {f.name: tf_transform_output.vocabulary_size_by_name(
        features.vocabulary_name(f.name)) + spec.num_oov_buckets for f in spec.item_features}
    for f in spec.context_features:
        sizes[features.context_key(f.name)] = tf_transform_output.vocabulary_size_by_name(
            features.context_vocabulary_name(f.name)) + spec.num_oov_buckets
    return FeatureLayout(
        item_names=tuple(f.name for f in spec.item_features),
        multivalued=tuple(f.name for f in spec.item_features if f.multivalued),
        query_item_names=tuple(spec.query_item_features),
        context_names=tuple(f.name for f in spec.context_features),
        vocab_sizes=sizes, id_name=spec.item_id)


def cfm_groups(doc: Optional[Mapping[str, Any]], hp: hparams_lib.HParams
               ) -> Optional[dict[str, list[str]]]:
    """CFM groups: each seed plus the next features of the artefact's ranking.

    The ranking is by the artefact's grouping measure; the group size is the
    variant's split size (or ``hp.n_masked``).
    """
    if doc is None:
        return None
    k = len(doc["features"])
    n_masked = hp.masked_count(k)
    if not 1 <= n_masked < k:
        raise ValueError(f"hparams.n_masked must be in [1, {k - 1}] for {k} item features, "
                         f"got {n_masked}.")
    return {seed: [seed, *ranked[: n_masked - 1]] for seed, ranked in doc["ranking"].items()}


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy named in the hyper-parameters."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


#: Most training steps per call of Keras' compiled train function
#: (``steps_per_execution``): fewer Python round trips between steps (about
#: 14% of a MovieLens-1M step).
MAX_STEPS_PER_EXECUTION = 25


def steps_per_execution(hp: hparams_lib.HParams) -> int:
    """The largest count <= MAX_STEPS_PER_EXECUTION dividing every epoch's steps.

    Keras calls batch callbacks once per execution; when the count divides
    ``steps_per_epoch`` and the last (cut) epoch, training still stops at
    exactly ``train_steps``. 1 under a ``tf.distribute`` strategy: the
    replicas' collective ops (the global batch's candidates) fail inside
    Keras' loop of steps.
    """
    if hp.strategy != "default":
        return 1
    last = hp.train_steps % hp.steps_per_epoch or hp.steps_per_epoch
    common = math.gcd(hp.steps_per_epoch, last)
    return max(d for d in range(1, MAX_STEPS_PER_EXECUTION + 1) if common % d == 0)


class StepCounter(tf_keras.callbacks.Callback):
    """Counts the steps trained (``done``), whatever Keras' ``steps_per_execution``.

    Keras reports a batch-end once per execution, with the epoch's index of
    its last step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.done, self._epoch_start = 0, 0
        self._supports_tf_logs = True    # no conversion of the logs to NumPy per call

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        """Remembers the steps of the earlier epochs."""
        self._epoch_start = self.done

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        """``done`` = the earlier epochs' steps + this epoch's so far."""
        self.done = self._epoch_start + batch + 1


class StopAtStep(StepCounter):
    """Ends training after exactly ``steps`` optimisation steps.

    Keras trains whole epochs of ``steps_per_epoch`` steps; with this callback
    the last epoch is cut short, so a ``train_steps`` that is not a multiple of
    ``steps_per_epoch`` is still the number of steps trained (with
    :func:`steps_per_execution`'s count). It also logs the step and loss every
    few seconds (:mod:`components.trainer.progress`).
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.reporter = progress.Reporter(steps)

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        """Stops the fit loop once ``steps`` batches were trained; reports progress."""
        super().on_train_batch_end(batch, logs)
        if self.reporter.due(self.done):    # the loss is read only when a record is due
            self.reporter.report(self.done, float((logs or {}).get("loss", float("nan"))))
        if self.done >= self.steps:
            self.model.stop_training = True


class Throughput(StepCounter):
    """Logs the training pairs per second after the first epoch (tracing, input warm-up).

    ``batch_size`` is the global batch: over several workers, the rate is the
    whole job's.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size, self.start, self.start_step = batch_size, 0.0, 0
        self.examples_per_s: Optional[float] = None

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        """Starts the clock after the first epoch."""
        if epoch == 0:
            self.start, self.start_step = time.perf_counter(), self.done

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        """Logs the rate (nothing when training had one epoch)."""
        steps = self.done - self.start_step
        if self.start and steps:
            self.examples_per_s = steps * self.batch_size / (time.perf_counter() - self.start)
            logging.info(f"{THROUGHPUT_RECORD} %.1f", self.examples_per_s)


class EpochTensorBoard(tf_keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback (``update_freq="epoch"``) without its per-batch hook.

    Keras calls that hook after every step even when it records nothing, and
    each call makes a summary op per metric: about 0.6 ms of Python a step
    (5% of a MovieLens-1M step). The model's train graph, which Keras writes
    after the first batch, is written at the first epoch's end instead.
    """

    def _implements_train_batch_hooks(self) -> bool:
        return False

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        """Writes the train graph once, then the epoch's scalars."""
        if self._should_write_train_graph:
            self._write_keras_model_train_graph()
            self._should_write_train_graph = False
        super().on_epoch_end(epoch, logs)


class LearningRateLogger(tf_keras.callbacks.Callback):
    """Writes the optimizer's learning rate to TensorBoard at each epoch end."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        """Logs ``learning_rate``."""
        with self.writer.as_default():
            lr = self.model.optimizer.learning_rate
            tf.summary.scalar("learning_rate", float(tf_keras.backend.get_value(lr)), step=epoch)


def build_model(spec: DatasetSpec, hp: hparams_lib.HParams,
                tf_transform_output: tft.TFTransformOutput,
                correlation: Optional[Mapping[str, Any]],
                sampling: Optional[Sampling] = None, execution_steps: int = 1) -> TwoTowerSSL:
    """The compiled model (Adagrad, as in the paper).

    ``execution_steps`` is Keras' ``steps_per_execution``: the training steps
    one call of the model's train function runs.
    """
    groups = cfm_groups(correlation, hp) if hp.flags.masking == "cfm" else None
    model = TwoTowerSSL(feature_layout(spec, tf_transform_output), hp, groups, sampling)
    model.compile(optimizer=tf_keras.optimizers.Adagrad(learning_rate=hp.learning_rate),
                  steps_per_execution=execution_steps)
    return model


def catalog_sampling(spec: DatasetSpec, hp: hparams_lib.HParams,
                     tf_transform_output: tft.TFTransformOutput, catalog_dir: str
                     ) -> tuple[Optional[dict[str, tf.RaggedTensor]], Optional[Sampling]]:
    """The catalog the uniform stream draws from, and the logQ counts.

    Both None unless ``hp``'s variant draws uniform catalog batches. The counts
    are the catalog's training counts: global, whichever worker reads them.
    """
    if not hp.flags.needs_catalog:
        return None, None
    decode = data.transformed_decoder(tf_transform_output)
    keys = [features.item_key(f.name) for f in spec.item_features]
    catalog = data.load_catalog(catalog_dir, decode, [*keys, features.ITEM_TRAIN_COUNT])
    counts = catalog[features.ITEM_TRAIN_COUNT]      # dense [N, 1]
    return catalog, Sampling(train_pairs=float(tf.reduce_sum(counts)),
                             n_items=float(counts.shape[0]))


def input_stream(hp: hparams_lib.HParams, tf_transform_output: tft.TFTransformOutput,
                 train_dir: str, catalog: Optional[dict[str, tf.RaggedTensor]],
                 shuffle_buffer: int = 100_000,
                 context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """The ``(main, ssl)`` batches of ``hp``'s variant.

    With ``context`` (training over several workers), the batches of one
    worker's input pipeline: its shard of the training pairs, per-replica
    batch sizes (``hp``'s are global), and a uniform catalog stream seeded by
    the pipeline's index, so no two workers draw the same items.
    """
    batch, ssl_batch, shard = hp.batch_size, hp.ssl_batch_size, (1, 0)
    if context is not None:
        batch = context.get_per_replica_batch_size(hp.batch_size)
        ssl_batch = context.get_per_replica_batch_size(hp.ssl_batch_size)
        shard = (context.num_input_pipelines, context.input_pipeline_id)
    decode = data.transformed_decoder(tf_transform_output)
    main = data.main_stream(train_dir, decode, batch, hp.seed, shuffle_buffer, shard)
    if catalog is None:
        return data.training_stream(main, None)
    return data.training_stream(main, data.ssl_stream(catalog, ssl_batch, hp.seed + shard[1]))


def training_input(spec: DatasetSpec, hp: hparams_lib.HParams,
                   tf_transform_output: tft.TFTransformOutput, train_dir: str,
                   catalog_dir: str, shuffle_buffer: int = 100_000
                   ) -> tuple[tf.data.Dataset, Optional[Sampling]]:
    """The ``(main, ssl)`` batches of ``hp``'s variant in one process, and its logQ counts.

    The counts are None unless the variant draws uniform catalog batches.
    """
    catalog, sampling = catalog_sampling(spec, hp, tf_transform_output, catalog_dir)
    return input_stream(hp, tf_transform_output, train_dir, catalog, shuffle_buffer), sampling


def train(spec: DatasetSpec, hp: hparams_lib.HParams, transform_dir: str, train_dir: str,
          catalog_dir: str, log_dir: str, correlation: Optional[Mapping[str, Any]] = None,
          callbacks: Sequence[tf_keras.callbacks.Callback] = (),
          tf_transform_output: Optional[tft.TFTransformOutput] = None
          ) -> tuple[TwoTowerSSL, tf_keras.callbacks.History]:
    """Trains the model of ``hp.variant``; returns it with the Keras history.

    Trains exactly ``hp.train_steps`` steps, in epochs of ``hp.steps_per_epoch``
    (the last one shorter when they do not divide). ``callbacks`` run after
    the TensorBoard and learning-rate loggers. ``tf_transform_output``:
    ``transform_dir`` already loaded (its Transform graph is loaded once per
    output, so the export can reuse it).

    Seeds Python, NumPy and TF from ``hp.seed`` and enables TF's op
    determinism, so equal seeds and inputs give equal weights. Under a
    multi-worker strategy (``TF_CONFIG`` set, see
    :mod:`components.trainer.workers`) each worker reads its own input
    pipeline; the chief's initial weights are broadcast to the others.
    """
    strategy = make_strategy(hp.strategy)     # first: collectives are set up before any op
    tf_keras.utils.set_random_seed(hp.seed)
    tf.config.experimental.enable_op_determinism()
    tf_transform_output = tf_transform_output or tft.TFTransformOutput(transform_dir)
    catalog, sampling = catalog_sampling(spec, hp, tf_transform_output, catalog_dir)
    if hp.strategy == "multi_worker_mirrored":
        stream = tf_keras.utils.experimental.DatasetCreator(
            lambda context: input_stream(hp, tf_transform_output, train_dir, catalog,
                                         context=context))
    else:
        stream = input_stream(hp, tf_transform_output, train_dir, catalog)
    with strategy.scope():
        model = build_model(spec, hp, tf_transform_output, correlation, sampling,
                            steps_per_execution(hp))
    history = model.fit(
        stream, epochs=math.ceil(hp.train_steps / hp.steps_per_epoch),
        steps_per_epoch=hp.steps_per_epoch, verbose=2,
        callbacks=[StopAtStep(hp.train_steps), EpochTensorBoard(log_dir=log_dir),
                   LearningRateLogger(log_dir), Throughput(hp.batch_size), *callbacks])
    return model, history


def train_and_export(job: workers.Job) -> None:
    """Trains ``job``'s model and exports it: the Trainer's work in one process.

    In a multi-worker run (``TF_CONFIG`` set) every worker calls this; only
    the chief's TensorBoard logs and export are kept, the others write to a
    scratch folder that is removed (every worker must save: saving can run
    collective ops); local workers' scratch folders are under
    ``job.scratch_root``, which :func:`~components.trainer.workers.run_local`
    also removes when a worker was killed.
    """
    hp, spec = trainer_component.read_custom_config(job.custom_config)
    correlation = correlation_report.read(job.correlation_uri) if job.correlation_uri else None
    log_dir, export_dir, scratch = job.log_dir, job.export_dir, None
    if not workers.is_chief():
        if job.scratch_root:
            os.makedirs(job.scratch_root, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="trainer-worker-", dir=job.scratch_root)
        log_dir, export_dir = os.path.join(scratch, "logs"), os.path.join(scratch, "export")
    tf_transform_output = tft.TFTransformOutput(job.transform_dir)
    try:
        model, history = train(spec, hp, job.transform_dir, job.train_dir, job.catalog_dir,
                               log_dir, correlation, tf_transform_output=tf_transform_output)
        logging.info("final metrics: %s", {k: v[-1] for k, v in history.history.items()})
        export.export(model, tf_transform_output, export_dir)    # the graph loaded in training
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def run_fn(fn_args: Any) -> None:
    """Trains and exports; called by the Trainer component.

    ``fn_args.custom_config`` is :func:`components.trainer.component.custom_config`;
    ``fn_args.correlation_uri`` and ``fn_args.catalog_dir``
    are set by :class:`components.trainer.component.Executor`. With
    ``hparams.workers`` N > 1 outside a cluster, starts N local workers
    (:func:`components.trainer.workers.run_local`).
    """
    hp, _ = trainer_component.read_custom_config(fn_args.custom_config)
    job = workers.Job(
        custom_config=dict(fn_args.custom_config), transform_dir=fn_args.transform_output,
        train_dir=os.path.dirname(fn_args.train_files[0]), catalog_dir=fn_args.catalog_dir,
        correlation_uri=getattr(fn_args, "correlation_uri", None) or None,
        log_dir=fn_args.model_run_dir, export_dir=fn_args.serving_model_dir)
    if hp.workers > 1 and not workers.in_cluster():
        workers.run_local(hp.workers, job)
    else:
        train_and_export(job)


def main(argv: Sequence[str]) -> None:
    """A training worker: ``python -m components.trainer.run JOB.json PARENT_PID``.

    ``TF_CONFIG`` is set; exits when the Trainer step that started it
    (``PARENT_PID``) is gone.
    """
    worker_exit.exit_with_parent(int(argv[2]))
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO)
    train_and_export(workers.Job.read(argv[1]))


if __name__ == "__main__":
    main(sys.argv)
