"""oversample.method auto on real Spark, Delta and Ray: on constructed tables it keeps no resampling where
resampling hurts and picks a resampler where it helps; gold is the chosen candidate's rows and says why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.balancing import auto as auto_rule
from jobs.balancing import oversample
from jobs.config import parse_config
from jobs.lakehouse import tables

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _silver(spark, cfg, rows: int, minority: float, shift: float, seed: int) -> None:
    """A two-class silver table on 2 folds and a test part: ``minority`` of the rows are class b, whose two
    features are shifted by ``shift`` standard deviations (0: no signal at all)."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(rows) < minority, "b", "a")
    x = rng.normal(size=(rows, 2)) + np.where(y == "b", shift, 0.0)[:, None]
    fold = np.where(rng.random(rows) < 0.15, -1, rng.integers(0, 2, rows))
    data = [(f"s{i:05d}", float(x[i, 0]), float(x[i, 1]), str(y[i]), int(fold[i])) for i in range(rows)]
    df = spark.createDataFrame(data, "sample_id string, f1 double, f2 double, y string, fold int")
    tables.overwrite(df, tables.Lake(cfg.lake_dir).path("silver"), "s-1", "curate",
                     {"fulcrum.folds": 2, "fulcrum.label": "y", "fulcrum.kind": "tabular"})  # fmt: skip


def _config(tmp_path, name, **train):
    return parse_config({
        "dataset": name, "kind": "tabular", "lake_root": str(tmp_path / "lake"), "seed": 3,
        "source": {"path": "unused.csv", "format": "csv"},
        "columns": {"label": "y", "features": ["f1", "f2"]}, "split": {"folds": 2},
        "oversample": {"method": "auto", "candidates": ["random"]},
        "train": {"batch_size": 32, "hidden": [16], "patience": 50, "warmup_steps": 1, "tensorboard": False,
                  "amp": False, **train},
    })  # fmt: skip


def test_auto_keeps_no_resampling_where_it_hurts_and_picks_a_resampler_where_it_helps(spark, tmp_path):
    # Hurts: no signal at all. Resampled, the model guesses the rare class for half the rows: macro-F1 no better,
    # and its probabilities are badly calibrated (the Brier score doubles).
    flat = _config(tmp_path, "flat", epochs=4, lr=0.01)
    _silver(spark, flat, 800, 0.15, 0.0, seed=1)
    report = oversample.run(spark, flat, "o-flat")
    auto = report.details["auto"]
    assert [c["name"] for c in auto["candidates"]] == ["none", "random"] and auto["chosen"] == "none", auto
    none, resampled = auto["candidates"]
    assert resampled["brier"] > none["brier"] and resampled["train_rows"] > none["train_rows"]
    assert resampled["vs_none"]["folds"] == 2  # its paired difference from none, over both folds
    gold = tables.read(spark, tables.Lake(flat.lake_dir).path("gold"))
    assert gold.where("synthetic_for IS NOT NULL").count() == 0  # gold: the chosen candidate's rows, no synthetic
    props = tables.properties(spark, tables.Lake(flat.lake_dir).path("gold"))
    assert json.loads(props["fulcrum.balance"])["chosen"] == "none" and props["fulcrum.class_weight"] == "none"

    # Helps: a rare class the model can separate but, on its own, learns too slowly to ever predict in the
    # training budget it has; repeated to balance, it is learnt.
    rare = _config(tmp_path, "rare", epochs=2, lr=0.003)
    _silver(spark, rare, 800, 0.04, 3.0, seed=2)
    report = oversample.run(spark, rare, "o-rare")
    auto = report.details["auto"]
    none, resampled = auto["candidates"]
    assert auto["chosen"] == "random" and resampled["mean"] > none["mean"] + rare.oversample.tolerance, auto
    # The reason follows the rule: a gain clear of the tolerance and two corrected standard errors of the paired
    # per-fold differences picks the best mean; a smaller one (two folds give a large error) ties the two and
    # calibration decides. Either way the resampled model's probabilities are the better ones too.
    vs = resampled["vs_none"]
    assert vs["diff"] > rare.oversample.tolerance and resampled["brier"] < none["brier"] and "against none +" in auto["reason"]
    clear = vs["se"] is not None and auto_rule.clear_gain(vs["diff"], vs["se"], rare.oversample.tolerance)
    assert ("clearly above every other candidate" if clear else "so the lowest Brier score") in auto["reason"], auto
    gold = tables.read(spark, tables.Lake(rare.lake_dir).path("gold"))
    assert gold.where("synthetic_for IS NOT NULL").count() > 0
    assert report.details["balance"]["after"]["2"]["b"] == report.details["balance"]["after"]["2"]["a"]
