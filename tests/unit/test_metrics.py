"""The anomaly checks over the metric history: the robust z-score against SciPy's MAD, and which check fires."""

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import median_abs_deviation

from jobs.config import AnomaliesConfig, AnomalyCheck
from jobs.lakehouse.metrics import detect, judge, robust_z


def test_robust_z_is_the_distance_from_the_median_in_normal_scaled_mads():
    history = [400.0, 440.0, 480.0, 520.0, 455.0, 1e6]  # one wild run moves neither the median nor the MAD much
    z, median = robust_z(300.0, history)
    assert median == np.median(history)
    assert z == pytest.approx((300.0 - median) / median_abs_deviation(history, scale="normal"))
    assert robust_z(5.0, [5.0, 5.0, 5.0]) == (0.0, 5.0)
    assert robust_z(5.1, [5.0, 5.0, 5.0])[0] == float("inf")  # no spread: any change is infinitely far


def history_of(*runs):
    return [dict(r) for r in runs]


GROWING = history_of({"rows_read": 400, "null_fraction.x": 0.01, "class_share.a": 0.5, "class_share.b": 0.3,
                      "class_share.c": 0.2, "mean.x": 50.0},
                     {"rows_read": 440, "null_fraction.x": 0.012, "class_share.a": 0.49, "class_share.b": 0.31,
                      "class_share.c": 0.2, "mean.x": 50.4},
                     {"rows_read": 480, "null_fraction.x": 0.009, "class_share.a": 0.5, "class_share.b": 0.29,
                      "class_share.c": 0.21, "mean.x": 49.7},
                     {"rows_read": 520, "null_fraction.x": 0.011, "class_share.a": 0.51, "class_share.b": 0.3,
                      "class_share.c": 0.19, "mean.x": 50.1})  # fmt: skip
SETTINGS = AnomaliesConfig(checks=[*AnomaliesConfig().checks, AnomalyCheck(metric="mean.*", z=5, policy="fail")])
STEADY = {"rows_read": 560, "null_fraction.x": 0.01, "class_share.a": 0.5, "class_share.b": 0.3,
          "class_share.c": 0.2, "mean.x": 50.2}  # fmt: skip


@pytest.mark.parametrize("drift, fired", [
    ({}, {}),  # a growing source, no drift: quiet
    ({"rows_read": 280}, {"rows_read": "warn"}),  # half of last night's batch
    ({"mean.x": 55.0}, {"mean.x": "fail"}),  # five column deviations away (stdev 1): a user's fail check
    ({"class_share.c": None, "class_share.a": 0.62, "class_share.b": 0.38},  # a class gone
     {"class_share.c": "warn", "class_share.a": "warn", "class_share.b": "warn"}),
    ({"null_fraction.x": 0.03}, {}),  # within min_delta 0.05: quiet however far in z
    ({"null_fraction.x": 0.30}, {"null_fraction.x": "warn"}),
])  # fmt: skip
def test_the_right_check_fires_with_its_policy_and_the_others_stay_quiet(drift, fired):
    current = {**STEADY, **drift}
    current = {k: v for k, v in current.items() if v is not None}
    found = detect(current, GROWING, SETTINGS)
    assert {a.metric: a.policy for a in found} == fired
    assert [a.policy for a in found] == sorted((a.policy for a in found), key=lambda p: p != "fail")


def test_nothing_fires_before_min_runs_and_the_window_limits_the_history():
    assert detect({"rows_read": 10}, GROWING[:2], AnomaliesConfig(min_runs=3)) == []
    assert detect({"rows_read": 10}, GROWING[:3], AnomaliesConfig(min_runs=3))
    # With a window of 2, only the last two runs are the baseline (and count towards min_runs).
    assert detect({"rows_read": 10}, GROWING, AnomaliesConfig(min_runs=3, window=2)) == []


def test_a_metric_is_judged_by_the_first_check_that_names_it():
    settings = AnomaliesConfig(checks=[AnomalyCheck(metric="rows_read", change=0.9, policy="fail"),
                                       AnomalyCheck(metric="rows_*", change=0.1)])  # fmt: skip
    assert detect({**STEADY, "rows_read": 280}, GROWING, settings) == []  # -46 % is within the first check's 90 %


def test_judge_words_what_fired():
    check = AnomalyCheck(metric="rows_read", change=0.4, z=3)
    a = judge("rows_read", 260.0, [400.0, 440.0, 480.0, 520.0], check)
    assert a.previous == 520.0 and a.change == pytest.approx(-0.5) and a.median == 460.0
    assert "changed -50% from the previous run (limit ±40%)" in a.rule and "robust z-score" in a.rule
    assert a.describe().startswith("rows_read = 260, previous run 520, median of the window 460: ")


@pytest.mark.parametrize("check, error", [
    ({"metric": "rows_read"}, "needs `change`, `z` or both"),
    ({"metric": "rows_read", "z": 0}, "greater than 0"),
    ({"metric": "rows_read", "z": 3, "policy": "drop"}, "'warn' or 'fail'"),
    ({"metric": "", "z": 3}, "at least 1 character"),
])  # fmt: skip
def test_bad_checks_are_named(check, error):
    with pytest.raises(ValidationError, match=error):
        AnomalyCheck(**check)
