import json

import numpy as np
import pytest

from jobs.validation.suites import SuiteError, default_name, load_suite


def write(tmp_path, expectations, name="toy"):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"name": name, "expectations": expectations}))
    return path


def test_policies_names_and_overrides(tmp_path):
    path = write(tmp_path, [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}, "meta": {"policy": "drop"}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 0}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "s", "value_set": ["a"]},
         "meta": {"name": "s_known", "policy": "warn"}},
    ])  # fmt: skip
    suite, rules = load_suite(path, {"s_known": "fail"})
    assert [(r.name, r.policy, r.row_level) for r in rules] == [
        ("x_not_be_null", "drop", True), ("x_mean_to_be_between", "warn", False), ("s_known", "fail", True),
    ]  # fmt: skip
    assert [e.meta["policy"] for e in suite.expectations] == ["drop", "warn", "fail"]


def test_default_names():
    assert default_name("expect_column_values_to_be_between", {"column": "Age"}) == "age_be_between"
    assert default_name("expect_table_row_count_to_be_between", {}) == "table_row_count_to_be_between"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "is not a GX suite"),
        ('{"name": "x", "expectations": [{"type": "expect_column_values_to_be_purple", "kwargs": {"column": "x"}}]}',
         "unknown expectation type 'expect_column_values_to_be_purple'"),
        ('{"name": "x", "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"},'
         ' "meta": {"policy": "explode"}}]}', "policy 'explode' is not one of warn, drop, fail"),
        ('{"name": "x", "expectations": [{"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x"},'
         ' "meta": {"policy": "drop"}}]}', "policy drop needs a row-level expectation"),
        ('{"name": "x", "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}},'
         ' {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}]}', "names repeat"),
        ('{"name": "x", "expectations": [{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x",'
         ' "min_value": "a", "max_value": 1, "strict_min": "maybe"}}]}', "Great Expectations rejected the suite"),
        ('{"name": "x", "expectations": [{"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "extra",'
         ' "value_set": [[1, [1, 2]]]}}]}', r"value_set holds \[1, \[1, 2\]\], which is not one value"),
    ],
)  # fmt: skip
def test_invalid_suites_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "suite.json"
    path.write_text(content)
    with pytest.raises(SuiteError, match=message) as err:
        load_suite(path)
    assert err.value.exit_code == 2


def test_missing_suite_and_unknown_override(tmp_path):
    with pytest.raises(SuiteError, match="suite not found"):
        load_suite(tmp_path / "nope.json")
    path = write(tmp_path, [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}])
    with pytest.raises(SuiteError, match="names expectations the suite lacks"):
        load_suite(path, {"nope": "drop"})


def test_shipped_suites_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "expectations").glob("*.json")):
        _, rules = load_suite(path)
        assert rules and any(r.policy == "drop" for r in rules)


# Rows per income bracket 1-24 of the 1996 American National Election Study (statsmodels.datasets.anes96): the
# quartiles sit at 14 / 17 / 21, and the 31 rows of brackets 1 and 2 are a real low tail, not outliers.
ANES96_INCOME = [19, 12, 17, 19, 18, 13, 11, 17, 10, 15, 23, 35, 26, 39, 68, 70, 62, 48, 51, 100, 103, 53, 47, 68]


def _facts(values):
    """``profile``'s facts of a column, NumPy's percentiles standing in for Spark's ``percentile_approx``."""
    import numpy as np

    v = np.asarray(values, float)
    nz = v[v != 0]

    def of(x):
        return {"nonnull": len(x), "min": x.min(), "max": x.max(),
                "quartiles": list(np.percentile(x, [1, 25, 50, 75], method="inverted_cdf"))}  # fmt: skip

    return {**of(v), "rows": len(v), "distinct": len(np.unique(v)), **({"nonzero": of(nz)} if len(nz) else {})}


@pytest.mark.parametrize("name, make, how", [
    ("normal, signed", lambda r: r.normal(0, 10, 3000), "quartiles"),
    ("lognormal (an area)", lambda r: r.lognormal(6, 0.5, 3000), "log quartiles"),
    ("uniform 1-16 (symmetric, positive)", lambda r: r.integers(1, 17, 3000), "quartiles"),
    ("mostly dark pixel: 70 % zeros, lit 1-16, near-zero noise",
     lambda r: np.where(r.random(3000) < 0.7, np.where(r.random(3000) < 0.1, 0.004, 0.0), r.integers(1, 17, 3000)),
     "quartiles of the non-zero values"),
    ("amounts: 60 % zeros, the rest lognormal", lambda r: np.where(r.random(3000) < 0.6, 0.0, r.lognormal(3, 0.5, 3000)),
     "log quartiles of the non-zero values"),
    ("a flag: 97 % zeros", lambda r: (r.random(3000) < 0.03).astype(float), "observed of the non-zero values"),
    ("an edge pixel: 97 % zeros, near-zero noise and rarely lit",
     lambda r: np.select([r.random(3000) < 0.015, r.random(3000) < 0.015], [r.normal(0, 0.003, 3000),
                                                                          r.integers(1, 9, 3000)], 0.0),
     "observed of the non-zero values"),
    ("a dozen values", lambda r: r.normal(0, 1, 12), "observed"),
    ("a survey's income bracket, 1-24, most rows high (the 944 counts of ANES 1996, statsmodels' anes96)",
     lambda r: np.repeat(np.arange(1, 25), ANES96_INCOME), "log quartiles"),
])  # fmt: skip
def test_numeric_range_keeps_every_value_of_a_clean_column_and_fences_far_outliers(name, make, how):
    """Each kind of column gets its rule, keeps every one of its own values, and (with 20 values or more) an
    outlier as `bench_quality` injects it (the maximum plus 50 standard deviations) falls outside."""
    from jobs.validation.profile import numeric_range

    values = np.asarray(make(np.random.default_rng(3)), float)
    low, high, rule = numeric_range(_facts(values))
    assert rule == how, name
    assert low <= values.min() and values.max() <= high, (name, low, high)
    if len(values) >= 20:
        assert values.max() + 50 * values.std() > high, (name, high)


@pytest.mark.parametrize("name, counts, first", [
    ("party identification, 0-6", [200, 180, 108, 37, 94, 150, 175], 0),
    ("days a week of TV news, 0-7", [161, 100, 112, 101, 66, 84, 32, 288], 0),
    ("education, 1-7", [13, 52, 248, 187, 90, 227, 127], 1),
    ("self-placement left-right, 1-7", [16, 103, 147, 256, 170, 218, 34], 1),
])  # fmt: skip
def test_a_code_or_rating_scale_gets_plain_fences_that_a_dont_know_code_falls_outside(name, counts, first):
    """The ANES 1996 scales as they ship (statsmodels' anes96): every value kept, and a survey's "don't know" code
    of 99 outside the range (the log scale's fences reached 96 to 2,047 around these 0-7 scales)."""
    from jobs.validation.profile import numeric_range

    values = np.repeat(np.arange(first, first + len(counts)), counts).astype(float)
    low, high, rule = numeric_range(_facts(values))
    assert rule == "quartiles" and low <= values.min() and values.max() <= high < 99, (name, low, high, rule)


@pytest.mark.parametrize("load", ["load_digits", "load_wine", "load_diabetes", "load_breast_cancer", "load_iris"])
def test_numeric_ranges_keep_every_row_of_real_clean_tables(load):
    """scikit-learn's bundled tables, profiled whole: no row of them falls outside its suggested ranges."""
    from sklearn import datasets

    from jobs.validation.profile import numeric_range

    data = getattr(datasets, load)().data
    for j in range(data.shape[1]):
        low, high, _ = numeric_range(_facts(data[:, j]))
        assert low <= data[:, j].min() and data[:, j].max() <= high, (load, j, low, high)
