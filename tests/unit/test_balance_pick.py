"""oversample.method auto: the pick among the candidates (pure logic), and which candidates are compared."""

from __future__ import annotations

import math

import pytest

from jobs.balancing.auto import candidates, paired, pick, summarise
from jobs.config import parse_config


def _row(name, mean, brier, spread=0.0):
    """A candidate scored on 5 folds around ``mean`` (per-fold deviations ``spread`` × -2, -1, 0, 1, 2)."""
    folds = [mean + spread * d for d in (-2, -1, 0, 1, 2)] if not math.isnan(mean) else [None] * 5
    return {"name": name, "mean": mean, "brier": brier, "folds": folds}


@pytest.mark.parametrize("rows, tolerance, chosen, why", [
    # a clear winner: above the tolerance on every fold alike
    ([_row("none", 0.70, 0.10), _row("random", 0.80, 0.15)], 0.01, "random",
     "the highest mean 0.800, clearly above every other candidate; against none +0.100 ± 0.000"),
    # within the tolerance: tied, calibration decides (either way)
    ([_row("none", 0.795, 0.10), _row("random", 0.80, 0.15)], 0.01, "none", "so the lowest Brier score (0.1000)"),
    ([_row("none", 0.795, 0.20), _row("class_weight", 0.80, 0.15)], 0.01, "class_weight", "none, class_weight: no"),
    # outside it and the same on every fold: the metric decides, however well calibrated none is
    ([_row("none", 0.78, 0.01), _row("random", 0.80, 0.15)], 0.01, "random", "the highest mean"),
    # outside the tolerance on average, but the folds disagree (within two corrected standard errors): tied
    ([_row("none", 0.78, 0.01, 0.03), _row("random", 0.80, 0.15)], 0.01, "none", "lowest Brier score (0.0100)"),
    # the same with a resampler that is better calibrated: it wins the tie, and its gain over none is shown
    ([_row("none", 0.78, 0.16, 0.03), _row("smote", 0.80, 0.07)], 0.01, "smote", "against none +0.020 ± 0.032"),
    # none is clearly beaten; the two winners are tied with each other: calibration, then the simplest
    ([_row("none", 0.70, 0.1), _row("class_weight", 0.80, 0.2), _row("smote", 0.805, 0.1)], 0.01, "smote",
     "class_weight, smote: no clear difference"),
    ([_row("none", 0.70, 0.1), _row("class_weight", 0.80, 0.1), _row("smote", 0.80, 0.1)], 0.0, "class_weight",
     "then the simplest"),
    ([_row("none", 0.80, 0.1), _row("class_weight", 0.80, 0.1), _row("smote", 0.80, 0.1)], 0.0, "none",
     "then the simplest"),
    # without per-fold scores the means decide against the tolerance
    ([{"name": "none", "mean": 0.70, "brier": 0.1}, {"name": "random", "mean": 0.75, "brier": 0.2}], 0.01, "random",
     "clearly above"),
    # a candidate that could not be scored never wins
    ([_row("none", float("nan"), 0.1), _row("random", 0.5, 0.3)], 0.01, "random", "the highest mean"),
    ([_row("none", float("nan"), 0.1)], 0.01, "none", "no candidate could be scored"),
])  # fmt: skip
def test_pick_the_best_mean_unless_not_clearly_better_then_calibration_then_simplicity(rows, tolerance, chosen, why):
    got, reason = pick(rows, tolerance)
    assert got == chosen and why in reason, reason


@pytest.mark.parametrize("base, other, diff, se, n", [
    # differences 0.1, 0, 0.3: mean 0.4/3, sample variance s², corrected variance of the mean s² (1/3 + 1/2)
    ([0.7, 0.8, 0.6], [0.8, 0.8, 0.9], 0.4 / 3, math.sqrt(((0.1 - 0.4 / 3) ** 2 + (0.4 / 3) ** 2 + (0.3 - 0.4 / 3) ** 2)
                                                           / 2 * (1 / 3 + 1 / 2)), 3),
    ([0.7, None, float("nan")], [0.8, 0.9, 0.9], 0.1, float("inf"), 1),  # only the folds both scored
    ([], [0.5], float("nan"), float("inf"), 0),
])  # fmt: skip
def test_paired_differences_against_hand_computed_values(base, other, diff, se, n):
    d, s, k = paired(base, other)
    assert k == n and (math.isclose(d, diff) or (math.isnan(d) and math.isnan(diff)))
    assert math.isclose(s, se) or s == se == float("inf")


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
