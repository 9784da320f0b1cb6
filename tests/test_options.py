"""Trainer settings from the flags: one parser for both CLIs, conflicts are errors."""

import json
import os
import subprocess
import sys

import pytest

from components.trainer import hparams
from pipeline import options
from pipeline.datasets import synthetic
from transforms.spec import SpecError


def test_a_variant_in_hparams_and_another_in_variants_is_an_error_naming_both():
    with pytest.raises(SpecError, match=r"--hparams sets variant 'cfm' but --variants makes "
                                        r"'baseline' the main model \(baseline,so\)"):
        options.trainer_settings({"variant": "cfm"}, ("baseline", "so"))


@pytest.mark.parametrize("values,variants,expected", [
    ({"variant": "cfm"}, None, ("cfm",)),                  # --hparams alone chooses
    ({"variant": "cfm"}, ("cfm", "baseline"), ("cfm", "baseline")),    # agreeing
    ({}, ("so", "mns"), ("so", "mns")),                    # --variants alone chooses
    ({}, None, (hparams.DEFAULT_VARIANT,)),                # neither
])
def test_the_main_variant_is_the_one_asked_for(values, variants, expected):
    hp, got = options.trainer_settings(values, variants)
    assert got == expected and hp.variant == expected[0]


def test_a_flag_contradicting_hparams_is_an_error_and_an_agreeing_one_is_not():
    with pytest.raises(SpecError, match=r"--hparams sets strategy 'mirrored' but --strategy "
                                        r"says 'multi_worker_mirrored'"):
        options.trainer_settings({"strategy": "mirrored"}, None,
                                 strategy="multi_worker_mirrored")
    hp, _ = options.trainer_settings({"strategy": "mirrored"}, None, strategy="mirrored")
    assert hp.strategy == "mirrored"


def test_hparams_from_inline_json_or_a_yaml_file(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("variant: so\ntrain_steps: 350\n")
    assert options.load_hparams(str(path)) == {"variant": "so", "train_steps": 350}
    assert options.load_hparams('{"alpha": 0.3}') == {"alpha": 0.3}
    with pytest.raises(SpecError, match="expected a mapping"):
        options.load_hparams("[1, 2]")
    with pytest.raises(SpecError, match=r"--variants: expected comma-separated"):
        options.parse_variants(" , ")


@pytest.mark.parametrize("command", ["pipeline", "kubeflow"])
def test_both_command_lines_refuse_the_conflict(tmp_path, command):
    spec = synthetic.generate(synthetic.SyntheticConfig(n_items=20, n_pairs=50),
                              str(tmp_path / "data"))
    conflict = ["--hparams", json.dumps({"variant": "cfm"}), "--variants", "baseline"]
    if command == "pipeline":
        argv = ["-m", "pipeline", "run", "--dataset", spec, "--run-root", str(tmp_path / "r")]
    else:
        argv = ["-m", "kubeflow.compile", "--dataset", spec, "--image", "img:1",
                "--pipeline-root", "gs://bucket/root", "--output", str(tmp_path / "p.json")]
    done = subprocess.run([sys.executable, *argv, *conflict], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--hparams sets variant 'cfm' but --variants makes 'baseline'" in (done.stdout
                                                                               + done.stderr)
