"""The quality study's split with cold validation items, and the default-variant rule."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.common import RESULTS
from benchmarks.quality_study import protocol, report
from benchmarks.quality_study.data import item_ids, split_training
from benchmarks.quality_study.scoring import slice_metrics
from components.evaluate.report import OVERALL
from components.trainer import hparams
from transforms import features

KEY = features.item_key("item_id")


def _records(pairs_per_item):
    """One serialized row per pair: item ``i<k>`` appears ``pairs_per_item[k]`` times."""
    out = []
    for k, n in enumerate(pairs_per_item):
        for j in range(n):
            example = tf.train.Example(features=tf.train.Features(feature={
                KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"i{k}".encode()])),
                "row": tf.train.Feature(int64_list=tf.train.Int64List(value=[j]))}))
            out.append(example.SerializeToString())
    return np.array(out, dtype=object)


def test_cold_validation_items_leave_training_with_every_row(monkeypatch):
    monkeypatch.setattr(protocol, "VALIDATION_MAX_PAIRS", 10**9)
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 30, 400)
    records = _records(counts)
    split = split_training(records[rng.permutation(len(records))], 1.0, KEY)

    assert len(split.cold_items) == round(protocol.VALIDATION_COLD_ITEM_PERCENT / 100 * 400)
    train_items, val_items = item_ids(split.train, KEY), item_ids(split.validation, KEY)
    assert not set(train_items) & split.cold_items
    cold_rows = sum(counts[int(i[1:])] for i in (c.decode() for c in split.cold_items))
    assert np.isin(val_items, list(split.cold_items)).sum() == cold_rows
    warm = len(records) - cold_rows
    assert len(split.validation) - cold_rows == round(protocol.VALIDATION_SHARE * warm)
    assert len(split.train) + len(split.validation) == len(records)
    # The same rows in another order give the same split.
    again = split_training(records, 1.0, KEY)
    assert again.cold_items == split.cold_items
    assert np.array_equal(again.train, split.train)


def test_cold_items_are_uniform_over_items_not_pairs(monkeypatch):
    monkeypatch.setattr(protocol, "VALIDATION_MAX_PAIRS", 10**9)
    # 20 items with 500 pairs each and 980 with 1: a pair-uniform draw would
    # pick the heavy items about ten times as often as an item-uniform one.
    counts = [500] * 20 + [1] * 980
    heavy = 0
    for seed in range(5):
        monkeypatch.setattr(protocol, "SPLIT_SEED", seed)
        split = split_training(_records(counts), 1.0, KEY)
        heavy += sum(int(c.decode()[1:]) < 20 for c in split.cold_items)
    expected = 5 * 50 * 20 / 1000                  # 5 draws of 50 items, 2% heavy
    assert heavy <= 4 * expected


def test_validation_is_capped_and_the_share_kept(monkeypatch):
    monkeypatch.setattr(protocol, "VALIDATION_MAX_PAIRS", 50)
    records = _records([4] * 300)
    split = split_training(records, 0.5, KEY)                  # 600 of 1,200 rows kept
    assert len(split.validation) == 50
    assert not set(item_ids(split.train, KEY)) & split.cold_items
    # train = warm rows less the validation share, every cold item with >= 1 kept row.
    warm = [w for w in range(601) if w - round(protocol.VALIDATION_SHARE * w) == len(split.train)]
    assert warm and 600 - warm[0] >= len(split.cold_items) > 0


def test_validation_overall_is_the_warm_rows():
    ranks = np.array([0, 60, 3, 70, 1, 2])
    bucket = np.array(["head", "tail", "tail", "head", "cold", "cold"], dtype=object)
    got = slice_metrics(ranks, bucket, overall=bucket != "cold")
    assert got["overall_examples"] == 4
    assert got["overall_recall_at_50"] == pytest.approx(2 / 4)
    assert got["cold_recall_at_50"] == pytest.approx(1.0)
    assert slice_metrics(ranks, bucket)["overall_recall_at_50"] == pytest.approx(4 / 6)


def _values(gains):
    """Flat validation keys for two guard regimes and one more: variant -> (overall, cold)."""
    values = {}
    for regime in (*protocol.COLD_GUARD_REGIMES, "ml1m_full"):
        for variant, (overall, cold) in gains.items():
            for name, value in ((OVERALL, overall), (features.COLD, cold)):
                metric = protocol.score_key(name, "recall_at_50")
                values[f"{regime}_{variant}_validation_{metric}_mean"] = value
    return values


def test_default_rule_keeps_cold_items():
    values = _values({"baseline": (0.30, 0.10), "mns": (0.33, 0.02),
                      "cfm": (0.31, 0.095), "so": (0.32, 0.089)})
    regimes = [*protocol.COLD_GUARD_REGIMES, "ml1m_full"]
    out = report.default_rule(values, ["baseline", "mns", "cfm", "so"], regimes)
    # mns: +10% overall but -80% cold; so: -11% cold; cfm: -5% cold, +3.3% overall.
    assert out["default_rule_mns_eligible"] is False
    assert out["default_rule_so_eligible"] is False
    assert out["default_rule_cfm_eligible"] is True
    assert out["default_rule_cfm_overall_validation_gain"] == pytest.approx(0.31 / 0.30 - 1,
                                                                            abs=1e-4)
    assert out[report.DEFAULT_KEY] == "cfm"


def test_default_rule_falls_back_to_the_baseline():
    values = _values({"baseline": (0.30, 0.10), "mns": (0.33, 0.02), "fd": (0.29, 0.10)})
    regimes = [*protocol.COLD_GUARD_REGIMES, "ml1m_full"]
    out = report.default_rule(values, ["baseline", "mns", "fd"], regimes)
    assert out[report.DEFAULT_KEY] == "baseline"


def test_default_section_has_one_column_per_guard_regime():
    values = _values({"baseline": (0.30, 0.10), "cfm": (0.31, 0.095)})
    values.update(report.default_rule(values, ["baseline", "cfm"],
                                      [*protocol.COLD_GUARD_REGIMES, "ml1m_full"]))
    table = [line for line in report._default_section(values, ["baseline", "cfm"])
             if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1          # header, rule and rows agree
    assert table[-1] == "| cfm | +3.3% | -5.0% | -5.0% | yes |"


def test_default_rule_without_a_measurable_baseline():
    regimes = [*protocol.COLD_GUARD_REGIMES, "ml1m_full"]
    values = _values({"baseline": (0.30, 0.0), "cfm": (0.31, 0.01)})
    out = report.default_rule(values, ["baseline", "cfm"], regimes)
    assert out["default_rule_cfm_eligible"] is False           # no cold loss can be measured
    assert out[f"default_rule_cfm_{regimes[0]}_cold_validation_gain"] is None
    assert out[report.DEFAULT_KEY] == "baseline"
    assert report.default_rule(values, ["cfm"], regimes)[report.DEFAULT_KEY] is None
    section = report._default_section({**values, **out}, ["baseline", "cfm"])
    assert "| cfm | +3.3% | n/a | n/a | no |" in section


def test_the_pipeline_default_is_the_studys_choice():
    """Once the study's results name a default variant, the pipeline ships it."""
    path = os.path.join(RESULTS, f"{report.NAME}.json")
    with open(path) as f:
        chosen = json.load(f).get(report.DEFAULT_KEY)
    assert chosen is None or chosen == hparams.DEFAULT_VARIANT, (
        f"{path} chooses {chosen!r}; set components/trainer/hparams.py DEFAULT_VARIANT to it")
