"""Validation on real local Spark with GX's Spark engine: policies, quarantine, GX count parity."""

import json

import pytest
import yaml

from jobs import ingest, io, validate
from jobs.config import load_config
from jobs.errors import DataFailedError
from jobs.suites import load_suite

pytestmark = pytest.mark.spark

ROWS = [  # id, x, s
    ("a", 1.0, "ok"),
    ("b", None, "ok"),   # x null
    ("c", 50.0, "ok"),   # x out of range
    ("d", 2.0, "bad"),   # s not in set
    ("e", -5.0, "bad"),  # x out of range and s not in set
    ("f", 3.0, None),    # s null: in_set ignores nulls
]  # fmt: skip
SUITE = [
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}, "meta": {"name": "x_present", "policy": "drop"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 10},
     "meta": {"name": "x_in_range", "policy": "drop"}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "s", "value_set": ["ok"]},
     "meta": {"name": "s_known", "policy": "drop"}},
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "id", "regex": "^[a-e]$"},
     "meta": {"name": "id_a_to_e", "policy": "warn"}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1, "max_value": 100},
     "meta": {"name": "row_count", "policy": "fail"}},
]  # fmt: skip


def setup(tmp_path, spark, suite=SUITE, policies=None):
    (tmp_path / "suite.json").write_text(json.dumps({"name": "toy", "expectations": suite}))
    spark.createDataFrame(ROWS, "id string, x double, s string").coalesce(1).write.parquet(str(tmp_path / "src"))
    cfg = {"dataset": "toy", "kind": "tabular", "lake_root": "lake", "suite": "suite.json",
           "source": {"path": "src", "format": "parquet"},
           "columns": {"id": "id", "label": "s", "features": ["x"]},
           "validate": {"policies": policies or {}}}  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    cfg = load_config(tmp_path / "p.yaml")
    ingest.run(spark, cfg, "ingest-1")
    return cfg


def quarantine(spark, cfg):
    rows = io.read(spark, io.Lake(cfg.lake_dir).path("quarantine")).collect()
    return {r["id"]: (r["reason"], list(r["reasons"])) for r in rows}


def test_drop_quarantines_exactly_the_failing_rows_with_reasons(spark, tmp_path):
    cfg = setup(tmp_path, spark)
    report = validate.run(spark, cfg, "v-1")
    assert quarantine(spark, cfg) == {
        "b": ("x_present", ["x_present"]),
        "c": ("x_in_range", ["x_in_range"]),
        "d": ("s_known", ["s_known"]),
        "e": ("x_in_range", ["x_in_range", "s_known"]),
    }
    assert (report.rows_in, report.rows_out) == (6, 2)
    assert report.dropped == {"x_present": 1, "x_in_range": 2, "s_known": 2}
    # Per-expectation counts equal GX's own unexpected counts.
    gx_counts = {s["name"]: s["unexpected_count"] for s in report.details["summary"]}
    assert {k: gx_counts[k] for k in report.dropped} == report.dropped
    # warn reports but drops nothing: 'f' failed id_a_to_e and is kept.
    assert gx_counts["id_a_to_e"] == 1 and "f" not in quarantine(spark, cfg)
    assert (tmp_path / "lake" / "toy" / "reports" / "v-1" / "validation.json").is_file()
    assert (tmp_path / "lake" / "toy" / "reports" / "data_docs" / "index.html").is_file()


def test_rerun_replaces_quarantine_rows_instead_of_duplicating(spark, tmp_path):
    cfg = setup(tmp_path, spark)
    validate.run(spark, cfg, "v-1")
    validate.run(spark, cfg, "v-2")
    rows = io.read(spark, io.Lake(cfg.lake_dir).path("quarantine")).collect()
    assert len(rows) == 4 and {r["run_id"] for r in rows} == {"v-2"}


def test_warn_override_passes_rows_through(spark, tmp_path):
    cfg = setup(tmp_path, spark, policies={"x_present": "warn", "x_in_range": "warn", "s_known": "warn"})
    report = validate.run(spark, cfg, "v-1")
    assert (report.rows_in, report.rows_out, report.dropped) == (6, 6, {})
    assert quarantine(spark, cfg) == {}


def test_fail_policy_stops_and_writes_nothing_downstream(spark, tmp_path):
    suite = SUITE[:-1] + [{"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 100},
                           "meta": {"name": "row_count", "policy": "fail"}}]  # fmt: skip
    cfg = setup(tmp_path, spark, suite=suite)
    with pytest.raises(DataFailedError, match="row_count") as err:
        validate.run(spark, cfg, "v-1")
    assert err.value.exit_code == 1
    lake = io.Lake(cfg.lake_dir)
    assert not io.exists(spark, lake.path("quarantine"))
    last = io.read(spark, lake.path("runs")).filter("stage = 'validate'").collect()
    assert [(r["status"], r["run_id"]) for r in last] == [("failed", "v-1")]


def test_compiled_predicates_match_gx_counts_on_the_sample(spark, sample_dir, tmp_path):
    from pathlib import Path

    suite_path = Path(__file__).parents[2] / "expectations" / "cancer.json"
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml",
                      {"lake_root": str(tmp_path / "lake"), "suite": str(suite_path)})  # fmt: skip
    ingest.run(spark, cfg, "i-1")
    _, rules = load_suite(suite_path)
    bronze = io.read(spark, io.Lake(cfg.lake_dir).path("bronze"))
    result = validate.validate(bronze, *load_suite(suite_path), "cancer")
    gx_counts = {s["name"]: s["unexpected_count"] for s in result.report.details["summary"]}
    for rule in rules:
        if rule.row_level:
            assert bronze.filter(rule.fails()).count() == gx_counts[rule.name], rule.name
    injected = [json.loads(line) for line in (sample_dir / "cancer" / "injections.jsonl").read_text().splitlines()]
    out_of_range = {e["record_id"] for e in injected if e["kind"] == "out_of_range"}
    dropped = {r["record_id"] for r in result.rejected.collect()}
    assert out_of_range <= dropped


def test_image_sample_quarantines_every_broken_file_and_nothing_else(spark, sample_dir, tmp_path):
    cfg = load_config(sample_dir / "digits" / "digits.yaml", {"lake_root": str(tmp_path / "lake")})
    ingest.run(spark, cfg, "i-1")
    report = validate.run(spark, cfg, "v-1")
    reasons = {r["record_id"]: r["reason"] for r in io.read(spark, io.Lake(cfg.lake_dir).path("quarantine")).collect()}
    expected = {"corrupt_file": "image_undecodable", "missing_file": "image_missing",
                "path_escape": "image_outside_root", "decompression_bomb": "image_too_large",
                "format_mismatch": "image_format_mismatch"}  # fmt: skip
    injected = [json.loads(line) for line in (sample_dir / "digits" / "injections.jsonl").read_text().splitlines()]
    want = {e["record_id"]: expected[e["kind"]] for e in injected if e["kind"] in expected}
    assert reasons == want
    assert report.rows_out == report.rows_in - len(want)
    gx_counts = {s["name"]: s["unexpected_count"] for s in report.details["summary"]}
    assert {k: gx_counts[k] for k in report.dropped} == report.dropped


def test_suite_init_suggests_a_suite_that_validates_its_own_data(spark, tmp_path):
    from jobs.profile import init_suite

    cfg = setup(tmp_path, spark)
    path, count = init_suite(spark, cfg, tmp_path / "suggested.json")
    suite = json.loads(path.read_text())
    names = {e["meta"]["name"]: e for e in suite["expectations"]}
    assert names["enough_rows"]["meta"]["policy"] == "fail"
    assert names["id_present"]["meta"]["policy"] == "drop"  # complete column stays complete
    assert names["x_mostly_present"]["kwargs"]["mostly"] < 1  # one null in six
    assert names["x_in_range"]["kwargs"]["min_value"] < -5.0 and names["x_in_range"]["kwargs"]["max_value"] > 50.0
    assert names["s_known"]["kwargs"]["value_set"] == ["bad", "ok"]
    assert names["s_known"]["meta"]["policy"] == "warn"  # the label: clean normalises it
    assert "id_unique" in names and count == len(suite["expectations"])
    _, rules = load_suite(path)  # GX accepts it
    result = validate.validate(io.read(spark, io.Lake(cfg.lake_dir).path("bronze")), *load_suite(path), "toy")
    assert result.report.rows_out == 6  # the data it came from passes its own suite
    with pytest.raises(Exception, match="exists"):
        init_suite(spark, cfg, path)
