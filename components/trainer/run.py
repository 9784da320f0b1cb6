"""The Trainer's ``run_fn`` (by import path: ``components.trainer.run.run_fn``)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from components.correlation import report as correlation_report
from components.trainer import component as trainer_component
from components.trainer import data, export, progress
from components.trainer import hparams as hparams_lib
from components.trainer.model import FeatureLayout, Sampling, TwoTowerSSL
from transforms import features
from transforms.spec import DatasetSpec


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


class StopAtStep(tf_keras.callbacks.Callback):
    """Ends training after exactly ``steps`` optimisation steps.

    Keras trains whole epochs of ``steps_per_epoch`` steps; with this callback
    the last epoch is cut short, so a ``train_steps`` that is not a multiple of
    ``steps_per_epoch`` is still the number of steps trained. It also logs the
    step and loss every few seconds (:mod:`components.trainer.progress`).
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.done = steps, 0
        self.reporter = progress.Reporter(steps)
        self._supports_tf_logs = True    # the loss is read only when a record is due

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        """Stops the fit loop once ``steps`` batches were trained; reports progress."""
        self.done += 1
        if self.reporter.due(self.done):
            self.reporter.report(self.done, float((logs or {}).get("loss", float("nan"))))
        if self.done >= self.steps:
            self.model.stop_training = True


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
                sampling: Optional[Sampling] = None) -> TwoTowerSSL:
    """The compiled model (Adagrad, as in the paper)."""
    groups = cfm_groups(correlation, hp) if hp.flags.masking == "cfm" else None
    model = TwoTowerSSL(feature_layout(spec, tf_transform_output), hp, groups, sampling)
    model.compile(optimizer=tf_keras.optimizers.Adagrad(learning_rate=hp.learning_rate))
    return model


def training_input(spec: DatasetSpec, hp: hparams_lib.HParams,
                   tf_transform_output: tft.TFTransformOutput, train_dir: str,
                   catalog_dir: str, shuffle_buffer: int = 100_000
                   ) -> tuple[tf.data.Dataset, Optional[Sampling]]:
    """The ``(main, ssl)`` batches of ``hp``'s variant, and its logQ counts.

    The counts are None unless the variant draws uniform catalog batches.
    """
    decode = data.transformed_decoder(tf_transform_output)
    main = data.main_stream(train_dir, decode, hp.batch_size, hp.seed, shuffle_buffer)
    if not hp.flags.needs_catalog:
        return data.training_stream(main, None), None
    keys = [features.item_key(f.name) for f in spec.item_features]
    catalog = data.load_catalog(catalog_dir, decode, [*keys, features.ITEM_TRAIN_COUNT])
    counts = catalog[features.ITEM_TRAIN_COUNT]      # dense [N, 1]
    sampling = Sampling(train_pairs=float(tf.reduce_sum(counts)), n_items=float(counts.shape[0]))
    ssl = data.ssl_stream(catalog, hp.ssl_batch_size, hp.seed)
    return data.training_stream(main, ssl), sampling


def train(spec: DatasetSpec, hp: hparams_lib.HParams, transform_dir: str, train_dir: str,
          catalog_dir: str, log_dir: str, correlation: Optional[Mapping[str, Any]] = None,
          callbacks: Sequence[tf_keras.callbacks.Callback] = ()
          ) -> tuple[TwoTowerSSL, tf_keras.callbacks.History]:
    """Trains the model of ``hp.variant``; returns it with the Keras history.

    Trains exactly ``hp.train_steps`` steps, in epochs of ``hp.steps_per_epoch``
    (the last one shorter when they do not divide). ``callbacks`` run after
    the TensorBoard and learning-rate loggers.

    Seeds Python, NumPy and TF from ``hp.seed`` and enables TF's op
    determinism, so equal seeds and inputs give equal weights.
    """
    tf_keras.utils.set_random_seed(hp.seed)
    tf.config.experimental.enable_op_determinism()
    tf_transform_output = tft.TFTransformOutput(transform_dir)
    stream, sampling = training_input(spec, hp, tf_transform_output, train_dir, catalog_dir)
    with make_strategy(hp.strategy).scope():
        model = build_model(spec, hp, tf_transform_output, correlation, sampling)
    history = model.fit(
        stream, epochs=math.ceil(hp.train_steps / hp.steps_per_epoch),
        steps_per_epoch=hp.steps_per_epoch, verbose=2,
        callbacks=[StopAtStep(hp.train_steps), tf_keras.callbacks.TensorBoard(log_dir=log_dir),
                   LearningRateLogger(log_dir), *callbacks])
    return model, history


def run_fn(fn_args: Any) -> None:
    """Trains and exports; called by the Trainer component.

    ``fn_args.custom_config`` is :func:`components.trainer.component.custom_config`;
    ``fn_args.correlation_uri`` and ``fn_args.catalog_dir``
    are set by :class:`components.trainer.component.Executor`.
    """
    hp, spec = trainer_component.read_custom_config(fn_args.custom_config)
    correlation = None
    if getattr(fn_args, "correlation_uri", None):
        correlation = correlation_report.read(fn_args.correlation_uri)
    train_dir = os.path.dirname(fn_args.train_files[0])
    model, history = train(spec, hp, fn_args.transform_output, train_dir, fn_args.catalog_dir,
                           fn_args.model_run_dir, correlation)
    logging.info("final metrics: %s", {k: v[-1] for k, v in history.history.items()})
    export.export(model, tft.TFTransformOutput(fn_args.transform_output),
                  fn_args.serving_model_dir)
