"""Trainer settings from the command line, parsed the same way by every entry point.

``python -m pipeline run`` and ``python -m kubeflow.compile`` both take
``--hparams`` (a JSON/YAML object, inline or in a file) and ``--variants``;
where a flag and ``--hparams`` set the same thing differently, that is an
error naming both, never a silent choice.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import yaml

from components.trainer import hparams as hparams_lib
from transforms.spec import SpecError

#: Hyper-parameters whose command-line flag has another name.
FLAG_NAMES = {"workers": "trainer-workers"}


def load_hparams(value: Optional[str]) -> dict[str, Any]:
    """``--hparams``: inline JSON/YAML or the path of a JSON/YAML file -> a mapping."""
    if not value:
        return {}
    text = value
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            text = f.read()
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"--hparams: not JSON/YAML: {e}") from e
    if not isinstance(parsed, dict):
        raise SpecError(f"--hparams: expected a mapping of hyper-parameters, got {value!r}.")
    return parsed


def parse_variants(value: Optional[str]) -> Optional[tuple[str, ...]]:
    """``--variants a,b``: the variants in order (None when the flag was not given)."""
    if value is None:
        return None
    variants = tuple(v.strip() for v in value.split(",") if v.strip())
    if not variants:
        raise SpecError(f"--variants: expected comma-separated Trainer variants, got {value!r}.")
    return variants


def trainer_settings(values: dict[str, Any], variants: Optional[tuple[str, ...]],
                     **flags: Any) -> tuple[hparams_lib.HParams, tuple[str, ...]]:
    """Validated hyper-parameters and the Trainer variants, the first being the main model.

    Args:
      values: the ``--hparams`` mapping; its ``variant``, if any, is the main
        model's variant.
      variants: ``--variants`` (None: not given).
      **flags: hyper-parameters given by their own flags (None: not given).

    Raises:
      SpecError: a flag contradicts ``--hparams`` (the message names both), or
        a value is invalid.
    """
    values = dict(values)
    for key, flag in flags.items():
        if flag is None:
            continue
        if key in values and values[key] != flag:
            raise SpecError(f"--hparams sets {key} {values[key]!r} but "
                            f"--{FLAG_NAMES.get(key, key)} says {flag!r}; give it once.")
        values[key] = flag
    if variants is None:
        variants = (values.get("variant", hparams_lib.DEFAULT_VARIANT),)
    elif "variant" in values and values["variant"] != variants[0]:
        raise SpecError(f"--hparams sets variant {values['variant']!r} but --variants makes "
                        f"{variants[0]!r} the main model ({','.join(variants)}); drop one of "
                        "them, or list the --hparams variant first.")
    values["variant"] = variants[0]
    try:
        return hparams_lib.from_dict(values), variants
    except (TypeError, ValueError) as e:
        raise SpecError(f"--hparams: {e}") from e
