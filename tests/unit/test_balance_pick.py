"""oversample.method auto: the pick among the candidates (pure logic), and which candidates are compared."""

from __future__ import annotations

import math

import pytest

from jobs.balancing.auto import candidates, pick, summarise
from jobs.config import parse_config


def _row(name, mean, brier):
    return {"name": name, "mean": mean, "brier": brier}


@pytest.mark.parametrize("rows, tolerance, chosen, why", [
    # a clear winner
    ([_row("none", 0.70, 0.10), _row("random", 0.80, 0.15)], 0.01, "random", "the highest mean 0.800"),
    # within the tolerance: calibration decides
    ([_row("none", 0.795, 0.10), _row("random", 0.80, 0.15)], 0.01, "none", "lowest Brier score (0.1000)"),
    ([_row("none", 0.795, 0.20), _row("class_weight", 0.80, 0.15)], 0.01, "class_weight", "lowest Brier"),
    # outside it: the metric decides, however well calibrated the other
    ([_row("none", 0.78, 0.01), _row("random", 0.80, 0.15)], 0.01, "random", "the highest mean"),
    # tied on both: the simplest (the rows' order)
    ([_row("none", 0.80, 0.1), _row("class_weight", 0.80, 0.1), _row("smote", 0.80, 0.1)], 0.0, "none", "then the simplest"),
    # a candidate that could not be scored never wins
    ([_row("none", float("nan"), 0.1), _row("random", 0.5, 0.3)], 0.01, "random", "the highest mean"),
    ([_row("none", float("nan"), 0.1)], 0.01, "none", "no candidate could be scored"),
])  # fmt: skip
def test_pick_by_the_metric_then_calibration_then_simplicity(rows, tolerance, chosen, why):
    got, reason = pick(rows, tolerance)
    assert got == chosen and why in reason


def test_summarise_means_over_folds():
    trials = [{"level": "none", "fold": f, "train_rows": 10 + f, "metrics": {"macro_f1": m, "brier": b, "ece": 0.1}}
              for f, (m, b) in enumerate([(0.6, 0.2), (0.8, 0.4)])]  # fmt: skip
    (row,) = summarise(trials, ["none"], "macro_f1")
    assert math.isclose(row["mean"], 0.7) and math.isclose(row["std"], 0.1) and math.isclose(row["brier"], 0.3)
    assert row["folds"] == [0.6, 0.8] and row["train_rows"] == 10


def _cfg(kind="tabular", features=("a",), **oversample):
    base = {"dataset": "t", "kind": kind, "source": {"path": "x", "format": "csv"},
            "columns": {"label": "y", "features": list(features)}, "oversample": {"method": "auto", **oversample}}
    if kind == "images":
        base.update({"columns": {"label": "y"}, "images": {"root": ".", "path_column": "p"}})
    return parse_config(base)


def test_the_candidates_by_default_and_as_configured():
    assert candidates(_cfg()) == ["none", "class_weight", "random", "smote"]
    assert candidates(_cfg(features=["a", {"name": "c", "kind": "categorical"}]))[-1] == "smotenc"
    assert candidates(_cfg(candidates=["smote", "none", "random"])) == ["none", "random", "smote"]
    assert candidates(_cfg(kind="images")) == ["none", "class_weight", "random"]  # images interpolate nothing
    assert parse_config({"dataset": "t", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                         "columns": {"label": "y", "features": ["a"]}}).oversample.method == "auto"  # the default
