"""Validation on real local Spark with GX's Spark engine: policies, quarantine, GX count parity."""

import json

import pytest
import yaml

from jobs import ingest
from jobs.config import load_config
from jobs.errors import DataFailedError
from jobs.lakehouse import tables
from jobs.validation import validate
from jobs.validation.suites import load_suite

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
    rows = tables.read(spark, tables.Lake(cfg.lake_dir).path("quarantine")).collect()
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
    rows = tables.read(spark, tables.Lake(cfg.lake_dir).path("quarantine")).collect()
    assert len(rows) == 4 and {r["run_id"] for r in rows} == {"v-2"}


def test_a_run_with_nothing_to_quarantine_commits_only_when_it_removes_rows(spark, tmp_path):
    lenient = setup(tmp_path, spark, policies={"x_present": "warn", "x_in_range": "warn", "s_known": "warn"})
    strict = lenient.model_copy(update={"validate_": lenient.validate_.model_copy(update={"policies": {}})})
    path = tables.Lake(lenient.lake_dir).path("quarantine")
    first = validate.run(spark, lenient, "v-1").details["quarantine_version"]  # creates the (empty) table
    assert validate.run(spark, lenient, "v-2").details["quarantine_version"] == first  # nothing changes: no commit
    assert tables.version(spark, path) == first and tables.partition_rows(path, "stage", ["validate"]) == 0
    dropped = validate.run(spark, strict, "v-3").details["quarantine_version"]
    assert dropped == first + 1 and tables.partition_rows(path, "stage", ["validate"]) == 4
    cleared = validate.run(spark, lenient, "v-4").details["quarantine_version"]  # v-3's rows must go: a commit
    assert cleared == dropped + 1 and quarantine(spark, lenient) == {}
    assert tables.partition_rows(str(tmp_path / "missing"), "stage", ["validate"]) is None


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
    lake = tables.Lake(cfg.lake_dir)
    assert not tables.exists(spark, lake.path("quarantine"))
    last = tables.read(spark, lake.path("runs")).filter("stage = 'validate'").collect()
    assert [(r["status"], r["run_id"]) for r in last] == [("failed", "v-1")]


def results_by_name(suite_json: dict) -> dict:
    """name -> (success, result) from a suite validation result in GX's JSON form."""
    return {r["expectation_config"]["meta"]["name"]: (r["success"], r["result"]) for r in suite_json["results"]}


def test_fused_results_equal_gx_own_on_the_sample(spark, sample_dir, tmp_path):
    """Fused pass + GX for the rest gives GX's own results, field by field, and quarantines those rows."""
    from pathlib import Path

    suite_path = Path(__file__).parents[2] / "expectations" / "cancer.json"
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml",
                      {"lake_root": str(tmp_path / "lake"), "suite": str(suite_path)})  # fmt: skip
    ingest.run(spark, cfg, "i-1")
    bronze = tables.read(spark, tables.Lake(cfg.lake_dir).path("bronze")).cache()
    reference = validate.run_gx(bronze, load_suite(suite_path)[0], "cancer")
    suite, rules = load_suite(suite_path)
    result = validate.validate(bronze, suite, rules, "cancer")
    assert results_by_name(result.report.details["gx_result"]) == results_by_name(reference.to_json_dict())
    assert result.report.details["gx_engine"] == []  # every expectation of the sample suite is fused
    gx_counts = {r.expectation_config.meta["name"]: r.result.get("unexpected_count") for r in reference.results}
    assert result.report.dropped == {
        r.name: gx_counts[r.name] for r in rules if r.policy == "drop" and gx_counts[r.name]
    }
    injected = [json.loads(line) for line in (sample_dir / "cancer" / "injections.jsonl").read_text().splitlines()]
    out_of_range = {e["record_id"] for e in injected if e["kind"] == "out_of_range"}
    dropped = {r["record_id"] for r in result.rejected.collect()}
    assert out_of_range <= dropped
    bronze.unpersist()


EDGE_SUITE = [  # every fused kind, with mostly, strict bounds, nulls, and ones only GX's engine runs
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 1, "max_value": 3,
     "strict_min": True, "mostly": 0.5}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "n", "max_value": 2}},
    {"type": "expect_column_values_to_not_be_in_set", "kwargs": {"column": "s", "value_set": ["bad"]}},
    {"type": "expect_column_values_to_not_match_regex", "kwargs": {"column": "id", "regex": "[ef]"}},
    {"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "s", "min_value": 3}},
    {"type": "expect_column_values_to_be_null", "kwargs": {"column": "s", "mostly": 0.1}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x", "mostly": 0.9}},
    {"type": "expect_column_sum_to_be_between", "kwargs": {"column": "n", "min_value": 0}},
    {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "s", "min_value": 0}},  # not numeric: GX errors
    {"type": "expect_column_max_to_be_between", "kwargs": {"column": "missing", "max_value": 1}},  # no column
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "n"}},
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "s"}, "meta": {"name": "s_unique"}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "s", "value_set": ["ok"],
     "row_condition": 'col("x") > 2', "condition_parser": "spark"}},
    {"type": "expect_table_column_count_to_equal", "kwargs": {"value": 4}},
]  # fmt: skip


def test_fused_results_equal_gx_own_on_edge_cases(spark, tmp_path):
    (tmp_path / "edge.json").write_text(json.dumps({"name": "edge", "expectations": EDGE_SUITE}))
    rows = [(r[0], r[1], r[2], n) for n, r in enumerate(ROWS)]
    df = spark.createDataFrame(rows, "id string, x double, s string, n long").cache()
    reference = validate.run_gx(df, load_suite(tmp_path / "edge.json")[0], "edge")
    suite, rules = load_suite(tmp_path / "edge.json")
    assert rules[0].fails() is rules[0].fails()  # a rule's predicate is built once (py4j round trips)
    result = validate.validate(df, suite, rules, "edge")
    mine = results_by_name(result.report.details["gx_result"])
    assert mine == results_by_name(reference.to_json_dict())
    assert len(result.report.details["fused"]) == 10  # all but the row condition, count, and the missing column
    assert not mine["s_mean_to_be_between"][0] and not mine["missing_max_to_be_between"][0]
    df.unpersist()


def test_uniqueness_on_integer_columns_counts_like_gx_whichever_way_it_is_counted(spark, tmp_path):
    """Dense integer columns are first counted with bitmaps (duplicates found there fall back to the group-by);
    sparse ranges and other types take the group-by; an all-null column takes no pass."""
    from pyspark.sql import functions as F

    columns = {  # column -> passes it takes
        "dense": 1, "dense_dup": 2, "negative": 1, "sparse": 1, "nulls": 1, "short": 1, "all_null": 0, "text": 1,
    }  # fmt: skip
    i = F.col("id")
    df = spark.range(2000, numPartitions=4).select(
        i.alias("dense"), (i % 1999).alias("dense_dup"), (-i - 40000).alias("negative"),
        (i * 10**12).alias("sparse"), F.when(i % 7 == 0, None).otherwise(i).cast("int").alias("nulls"),
        i.cast("short").alias("short"), F.lit(None).cast("long").alias("all_null"), (i % 1000).cast("string").alias("text"),
    ).cache()  # fmt: skip
    (tmp_path / "unique.json").write_text(json.dumps({"name": "unique", "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": c}} for c in columns]}))  # fmt: skip
    reference = validate.run_gx(df, load_suite(tmp_path / "unique.json")[0], "unique")
    result, evaluation = validate.run_suite(df, *load_suite(tmp_path / "unique.json"), "unique")
    assert results_by_name(result.to_json_dict()) == results_by_name(reference.to_json_dict())
    counts = {r.expectation_config.kwargs["column"]: r.result["unexpected_count"] for r in result.results}
    assert counts == {"dense": 0, "dense_dup": 2, "negative": 0, "sparse": 0, "nulls": 0, "short": 0,
                      "all_null": 0, "text": 2000}  # fmt: skip
    assert evaluation.group_passes == sum(columns.values())
    df.unpersist()


def test_image_sample_quarantines_every_broken_file_and_nothing_else(spark, sample_dir, tmp_path):
    cfg = load_config(sample_dir / "digits" / "digits.yaml", {"lake_root": str(tmp_path / "lake")})
    ingest.run(spark, cfg, "i-1")
    report = validate.run(spark, cfg, "v-1")
    reasons = {r["record_id"]: r["reason"] for r in tables.read(spark, tables.Lake(cfg.lake_dir).path("quarantine")).collect()}
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
    from jobs.validation.profile import init_suite

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
    result = validate.validate(tables.read(spark, tables.Lake(cfg.lake_dir).path("bronze")), *load_suite(path), "toy")
    assert result.report.rows_out == 6  # the data it came from passes its own suite
    with pytest.raises(Exception, match="exists"):
        init_suite(spark, cfg, path)


def test_suite_init_gives_nested_columns_null_checks_only_and_its_suite_validates_them(spark, tmp_path):
    """A JSON source with a struct, a list and a map column beside a label (found on a JSON Lines table: the
    suggested in-set expectation over a struct crashed validation with a Spark literal error)."""
    from jobs.validation.profile import profile, suggest

    rows = [{"id": f"r{i}", "y": "ab"[i % 2], "extra": {"a": i % 2, "b": [1, 2]}, "tags": ["x"] * (i % 3),
             "attrs": {"k": str(i % 2)}} for i in range(30)]  # fmt: skip
    df = spark.createDataFrame(rows, "id string, y string, extra struct<a:int,b:array<int>>, tags array<string>, "
                                     "attrs map<string,string>")  # fmt: skip
    suite = suggest(profile(df), "nested", label="y")
    checks = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    for column in ("extra", "tags", "attrs"):
        assert {t for t, c in checks if c == column} == {"expect_column_values_to_not_be_null"}, checks
    assert ("expect_column_values_to_be_in_set", "y") in checks
    path = tmp_path / "nested.json"
    path.write_text(json.dumps(suite))
    result = validate.validate(df, *load_suite(path), "nested")
    assert result.report.rows_out == 30


def test_suite_init_ranges_come_from_robust_statistics_and_catch_outliers_in_the_profiled_data(spark, tmp_path):
    """Outliers in the very data `suite init` profiles (1 % of the rows, far out, and a sentinel) are
    quarantined by the suite it writes, while a right-skewed column keeps its legitimate tail, a left-skewed
    bounded one (a pixel intensity of scikit-learn's digits: 0-16, most near 16, 0.7 % zeros) keeps its rare
    low values, a column that is mostly one value keeps its rare values, and a sparse one (a pixel that is
    mostly dark: 70 % zeros, near-duplicate noise about zero) keeps every lit value while its outliers go."""
    import numpy as np

    from jobs.validation.profile import init_suite

    rng = np.random.default_rng(5)
    n = 4000
    x = rng.normal(0, 10, n)  # signed, symmetric
    area = rng.lognormal(6.0, 0.5, n)  # positive, right-skewed (as areas are): a long legitimate upper tail
    flag = (rng.random(n) < 0.03).astype(float)  # mostly 0: quartiles coincide
    digits_pixel = [12, 12, 15, 17, 51, 57, 56, 53, 103, 95, 95, 105, 130, 165, 170, 207, 454]  # counts of 0..16
    score = rng.choice(17, n, p=np.array(digits_pixel) / sum(digits_pixel)).astype(float)
    sparse = np.where(rng.random(n) < 0.7, 0.0, rng.integers(1, 17, n).astype(float))
    sparse[rng.random(n) < 0.05] = 0.005 * rng.random()  # near-zero noise: the middle half is no longer one value
    bad = set(rng.choice(n, 70, replace=False).tolist())
    spread = sorted(bad)
    for i in spread[:25]:
        x[i] = x.max() + 50 * x.std()  # as bench_quality injects them
    for i in spread[25:30]:
        x[i] = -999.0  # a sentinel
    for i in spread[30:60]:
        area[i] = area.max() + 50 * area.std()
    for i in spread[60:]:
        sparse[i] = sparse.max() + 50 * sparse.std()
    rows = [(f"r{i:05d}", float(x[i]), float(area[i]), float(flag[i]), float(score[i]), float(sparse[i]),
             "a" if i % 2 else "b") for i in range(n)]  # fmt: skip
    spark.createDataFrame(rows, "id string, x double, area double, flag double, score double, sparse double, "
                          "s string").coalesce(1).write.parquet(str(tmp_path / "src"))  # fmt: skip
    cfg = {"dataset": "robust", "kind": "tabular", "lake_root": "lake", "source": {"path": "src", "format": "parquet"},
           "columns": {"id": "id", "label": "s", "features": ["x", "area", "flag", "score", "sparse"]}}  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    cfg = load_config(tmp_path / "p.yaml")
    ingest.run(spark, cfg, "ingest-1")
    path, _ = init_suite(spark, cfg, tmp_path / "suggested.json")
    names = {e["meta"]["name"]: e for e in json.loads(path.read_text())["expectations"]}
    assert names["x_in_range"]["meta"]["range_from"] == "quartiles"
    assert names["area_in_range"]["meta"]["range_from"] == "log quartiles"
    assert names["flag_in_range"]["meta"]["range_from"] == "observed of the non-zero values"  # 97 % zeros, the rest 1
    assert names["flag_in_range"]["kwargs"] == {"column": "flag", "min_value": 0, "max_value": 1}
    assert names["sparse_in_range"]["meta"]["range_from"].endswith("of the non-zero values")
    assert names["sparse_in_range"]["kwargs"]["min_value"] == 0 and names["sparse_in_range"]["kwargs"]["max_value"] >= 16
    assert names["score_in_range"]["meta"]["range_from"] == "quartiles" and names["score_in_range"]["kwargs"]["min_value"] == 0
    result = validate.validate(tables.read(spark, tables.Lake(cfg.lake_dir).path("bronze")), *load_suite(path), "robust")
    dropped = {r["id"] for r in result.rejected.select("id").collect()}
    assert dropped == {f"r{i:05d}" for i in bad}  # every outlier, and not one legitimate row
    # The old rule (observed min/max ± 10 %) would have caught none of them: each range held its outliers.
    assert names["x_in_range"]["kwargs"]["max_value"] < x.max() and names["x_in_range"]["kwargs"]["min_value"] > -999
