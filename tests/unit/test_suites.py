import json

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
