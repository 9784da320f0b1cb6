"""FeatureCorrelation's settings (light: no TFX import, so entry points can validate early)."""

from __future__ import annotations

import dataclasses

from components.correlation.estimator import MEASURES

WEIGHTINGS = ("items", "train_frequency")


@dataclasses.dataclass(frozen=True)
class CorrelationSettings:
    """How FeatureCorrelation counts and groups; validated here, once.

    Attributes:
      weighting: ``items`` (each catalog item once, the default: matches the
        uniform SSL distribution) or ``train_frequency`` (items weighted by
        their training count; cold items drop out).
      max_values: features with more distinct values are hashed into this
        many buckets (bias: MI is underestimated for them).
      measure: the dependence measure that ranks and groups the features:
        ``ami`` (adjusted MI, chance-corrected; the default) or ``nmi``
        (plug-in MI / max entropy). The artefact records both.
      sample_items: a catalog with more items is measured on a uniform
        sample of about this many, the same on every run (an item is in it
        when a hash of its id falls below ``sample_items / items``); 0
        measures every item. The statistics of a few hundred thousand items
        rank and group features as well as those of millions, and the
        step's cost grows with items x feature pairs (every item of a million,
        with 17 features, took over 20 minutes on 2 cores).
    """

    weighting: str = "items"
    max_values: int = 10_000
    measure: str = "ami"
    sample_items: int = 200_000

    def __post_init__(self) -> None:
        """Rejects values outside their choices or range, naming the setting."""
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"correlation weighting must be one of {WEIGHTINGS}, "
                             f"got {self.weighting!r}.")
        if self.max_values < 2:
            raise ValueError(f"correlation max_values must be >= 2, got {self.max_values}.")
        if self.sample_items < 0:
            raise ValueError(f"correlation sample_items must be >= 0 (0: every item), "
                             f"got {self.sample_items}.")
        if self.measure not in MEASURES:
            raise ValueError(f"correlation measure must be one of {MEASURES}, "
                             f"got {self.measure!r}.")
