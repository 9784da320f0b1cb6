"""Hyper-parameters of the two-tower SSL Trainer: one frozen, validated dataclass.

Travels to ``run_fn`` through the Trainer's ``custom_config`` as a plain dict;
:func:`from_dict` rejects unknown keys and out-of-range values, naming the
key and the allowed range. Defaults follow the paper (Yao et al., CIKM 2021),
scaled to MovieLens-1M sized data (a few thousand items, ~0.5M pairs, 2 CPU
cores).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from components.correlation import estimator

MASKINGS = ("none", "cfm", "rfm", "independent")
SPLITS = ("paper", "balanced")


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a variant trains: the flags the model reads.

    Attributes:
      masking: feature masking of the two SSL views: ``none``, ``cfm``
        (correlated: one seed feature per batch, its group against the rest),
        ``rfm`` (a random complementary split per example) or
        ``independent`` (two independent random masks).
      split: size of the masked set for ``k`` item features: ``paper``
        (the seed plus ``floor(k / 2)`` others) or ``balanced`` (``k // 2``
        features, seed counted: masked and kept sets of equal size).
      value_dropout: drop values of multi-valued features in each view.
      ssl_loss: add ``alpha * L_self`` over a uniform catalog batch.
      feature_dropout: drop whole features of the supervised item tower (FD).
      extra_negatives: add the un-augmented uniform catalog batch as extra
        negatives of the main loss (mixed negative sampling).
    """

    masking: str = "none"
    split: str = "paper"
    value_dropout: bool = False
    ssl_loss: bool = False
    feature_dropout: bool = False
    extra_negatives: bool = False

    def __post_init__(self) -> None:
        """Rejects an unknown masking kind or split size."""
        if self.masking not in MASKINGS or self.split not in SPLITS:
            raise ValueError(f"Variant: masking must be one of {MASKINGS} and split one of "
                             f"{SPLITS}; got {self.masking!r}, {self.split!r}.")
        if self.masking != "none" and not self.ssl_loss:
            raise ValueError("Variant: masking makes the two SSL views; it needs ssl_loss=True.")

    @property
    def needs_catalog(self) -> bool:
        """Whether training draws uniform catalog batches."""
        return self.ssl_loss or self.extra_negatives

    @property
    def ssl_views(self) -> int:
        """SSL-batch views through the item tower: 0 without SSL, 1 when both are the item."""
        if not self.ssl_loss:
            return 0
        return 1 if self.masking == "none" and not self.value_dropout else 2

    def n_masked(self, k: int) -> int:
        """Masked-set size (seed counted) for ``k`` item features."""
        if self.split == "balanced":
            return max(1, k // 2)
        return estimator.paper_group_size(k)


_SSL = {"ssl_loss": True}
#: The pipeline's main Trainer variant unless one is chosen: the best on
#: MovieLens-1M's validation split in the quality study
#: (benchmarks/results/quality.md), ahead of so and cfm.
DEFAULT_VARIANT = "mns"
#: Every variant, one row each: adding a variant is adding a row.
VARIANTS: dict[str, Variant] = {
    "baseline": Variant(),                                     # L_main only
    "fd": Variant(feature_dropout=True),                       # feature dropout, no SSL
    "so": Variant(**_SSL),                                     # spread-out: SSL, no augmentation
    "mns": Variant(extra_negatives=True),                      # uniform extra negatives, no SSL
    "rfm": Variant(masking="rfm", value_dropout=True, **_SSL),
    "cfm": Variant(masking="cfm", value_dropout=True, **_SSL),  # the paper
    "cfm_balanced": Variant(masking="cfm", split="balanced", value_dropout=True, **_SSL),
    "independent_masks": Variant(masking="independent", value_dropout=True, **_SSL),
    "cfm_no_dropout": Variant(masking="cfm", **_SSL),
    "dropout_only": Variant(value_dropout=True, **_SSL),
    # Negative sampling and SSL combined: the uniform catalog batch is both
    # the extra negatives of the main loss and the SSL loss's batch.
    "mns_cfm": Variant(masking="cfm", value_dropout=True, extra_negatives=True, **_SSL),
    "mns_so": Variant(extra_negatives=True, **_SSL),
}
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
ACTIVATIONS = ("relu", "gelu", "tanh", "swish")


@dataclasses.dataclass(frozen=True)
class HParams:
    """Every Trainer knob, with its reason.

    Attributes:
      variant: which model/loss to train (see ``VARIANTS``).
      embedding_dim: per-feature embedding width (small vocabularies here).
      hidden_units: tower MLP sizes; the last is the output embedding
        (paper: [1024, 128]; scaled down for a few thousand items).
      activation: MLP hidden activation (the output layer is linear).
      share_towers: one tower for queries and items; None (default) shares
        when the query is an item with no context features (item-to-item).
      temperature: softmax temperature tau of the main loss (paper
        0.06-0.07). Default: mns's best on MovieLens-1M validation (the
        baseline's and the SSL variants' was 0.05).
      ssl_temperature: tau of the SSL loss (None: same as ``temperature``;
        the paper gives none separately). Default: cfm's best on
        MovieLens-1M validation.
      alpha: weight of the SSL loss (paper grid 0.1, 0.3, 1, 3). Default:
        cfm's best on MovieLens-1M validation (grid 0.01-0.3).
      dropout_rate: value dropout rate d_r for multi-valued features
        (paper grid 0.1-0.9, best 0.3).
      feature_dropout_rate: per-feature drop probability of the FD baseline
        (default: fd's best on MovieLens-1M validation, the low end of its
        grid: dropping features did not help there).
      n_masked: features masked in view h, seed included (None: the
        variant's split size, see :meth:`Variant.n_masked`).
      logq_correction: subtract the log of each candidate's sampling
        probability from its logit (in-batch items: their training
        frequency; with extra uniform negatives: the mixture). The field's
        standard practice for in-batch negatives and on by default, a
        deviation from the paper's equation (see the README).
      remove_accidental_hits: mask in-batch negatives that are the positive item.
      batch_size: main-task batch (paper 1024-4096; 512 fits a laptop).
      ssl_batch_size: SSL batch of catalog items (uniform over the catalog).
      learning_rate: Adagrad learning rate (paper 0.01; 0.05 converges in
        fewer steps at this scale).
      train_steps: optimisation steps (default: mns's best checkpoint on
        MovieLens-1M validation).
      steps_per_epoch: steps between Keras epoch ends (logging, checkpoints).
      seed: seed of initialisation, shuffling, sampling and augmentation.
      strategy: tf.distribute strategy. ``workers`` > 1 implies
        ``multi_worker_mirrored`` (``mirrored`` is then an error).
      workers: training processes. 1 trains in the Trainer's process; N > 1
        starts N local worker processes on loopback (``TF_CONFIG``), the
        same code a cluster runs with one worker per pod
        (:mod:`components.trainer.workers`). ``batch_size`` and
        ``ssl_batch_size`` stay global (split across the workers).
    """

    variant: str = DEFAULT_VARIANT
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (256, 64)
    activation: str = "relu"
    share_towers: bool | None = None
    temperature: float = 0.025
    ssl_temperature: float | None = 0.05
    alpha: float = 0.03
    dropout_rate: float = 0.3
    feature_dropout_rate: float = 0.0125
    n_masked: int | None = None
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    batch_size: int = 512
    ssl_batch_size: int = 512
    learning_rate: float = 0.05
    train_steps: int = 3000
    steps_per_epoch: int = 200
    seed: int = 0
    strategy: str = "default"
    workers: int = 1

    @property
    def flags(self) -> Variant:
        """The variant's row of :data:`VARIANTS`."""
        return VARIANTS[self.variant]

    @property
    def uses_ssl(self) -> bool:
        """Whether the SSL loss is part of training."""
        return self.flags.ssl_loss

    @property
    def tau_ssl(self) -> float:
        """The SSL temperature actually used."""
        return self.temperature if self.ssl_temperature is None else self.ssl_temperature

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :func:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        return out

    def masked_count(self, k: int) -> int:
        """Features masked in view h for ``k`` item features."""
        return self.n_masked or self.flags.n_masked(k)


_RANGES = {
    "embedding_dim": (1, 4096), "temperature": (1e-4, 10.0), "ssl_temperature": (1e-4, 10.0),
    "alpha": (0.0, 100.0), "dropout_rate": (0.0, 0.95), "feature_dropout_rate": (0.0, 0.95),
    "n_masked": (1, 1000), "batch_size": (2, 1 << 20), "ssl_batch_size": (2, 1 << 20),
    "learning_rate": (1e-6, 10.0), "train_steps": (1, 1 << 31), "steps_per_epoch": (1, 1 << 31),
    "seed": (0, 1 << 31), "workers": (1, 64),
}
_CHOICES = {"variant": tuple(VARIANTS), "strategy": STRATEGIES, "activation": ACTIVATIONS}


def _checked(key: str, value: Any, default: Any) -> Any:
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ValueError(f"hparams.{key}: got {value!r}; allowed: {list(_CHOICES[key])}.")
        return value
    if key == "hidden_units":
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(u, int) and u > 0 for u in value)):
            raise ValueError(f"hparams.hidden_units: expected a non-empty list of positive ints, "
                             f"got {value!r}.")
        return tuple(value)
    if value is None and key in ("ssl_temperature", "n_masked", "share_towers"):
        return None
    if key in ("share_towers", "logq_correction", "remove_accidental_hits"):
        if not isinstance(value, bool):
            raise TypeError(f"hparams.{key}: expected true/false, got {value!r}.")
        return value
    low, high = _RANGES[key]
    kind = int if isinstance(low, int) else float
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"hparams.{key}: expected a number in [{low}, {high}], got {value!r}.")
    if kind is int and not float(value).is_integer():
        raise TypeError(f"hparams.{key}: expected an integer in [{low}, {high}], got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"hparams.{key}: {value!r} is outside the allowed range "
                         f"[{low}, {high}].")
    return kind(value)


def from_dict(values: Mapping[str, Any]) -> HParams:
    """Builds validated HParams; unknown keys and bad values raise, naming the key."""
    defaults = HParams()
    fields = {f.name for f in dataclasses.fields(HParams)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"hparams: unknown key(s) {unknown}; allowed keys: {sorted(fields)}.")
    checked = {k: _checked(k, v, getattr(defaults, k)) for k, v in values.items()}
    out = dataclasses.replace(defaults, **checked)
    if out.workers > 1:
        if out.strategy == "mirrored":
            raise ValueError(f"hparams.workers {out.workers} needs strategy "
                             "'multi_worker_mirrored' (or leave strategy unset), got 'mirrored'.")
        if out.batch_size % out.workers or out.ssl_batch_size % out.workers:
            raise ValueError(f"hparams.batch_size ({out.batch_size}) and ssl_batch_size "
                             f"({out.ssl_batch_size}) are global batches: each must divide by "
                             f"workers ({out.workers}).")
        out = dataclasses.replace(out, strategy="multi_worker_mirrored")
    return out
