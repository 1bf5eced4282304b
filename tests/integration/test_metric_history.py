"""Scheduled runs on real Spark and Delta: the metrics table, the anomaly checks over it, `fail` stopping a run
before anything downstream is written, idempotent re-runs, and `fulcrum metrics`."""

import json

import numpy as np
import pytest
import yaml

from jobs.cli import main
from jobs.config import load_config
from jobs.errors import DataFailedError
from jobs.lakehouse import tables
from jobs.pipeline import run_pipeline
from jobs.report import write_report
from tests.html_report import parse

pytestmark = [pytest.mark.spark, pytest.mark.slow]
STAGES = ["ingest", "validate", "curate"]
CHECKS = [
    {"metric": "rows_read", "change": 0.4, "policy": "fail"},
    {"metric": "batch.mean.*", "z": 5},
    {"metric": "batch.class_share.*", "z": 5, "min_delta": 0.05},
    {"metric": "null_fraction.*", "z": 5, "min_delta": 0.05},
    {"metric": "class_share.*", "z": 5, "min_delta": 0.05},
]  # fmt: skip


def source(n: int, shift_from: int | None = None, drop_class_from: int | None = None) -> list[tuple]:
    """The first ``n`` rows of a growing source (the same rows every night, new ones appended); from row
    ``shift_from`` on, x drifts by five of its standard deviations; from ``drop_class_from`` on, class c is gone."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(10, 2, 1000), rng.normal(0, 1, 1000)
    rows = []
    for i in range(n):
        label = "abc"[i % 3]
        if drop_class_from is not None and i >= drop_class_from and label == "c":
            label = "ab"[i % 2]
        xi = x[i] + (10.0 if shift_from is not None and i >= shift_from else 0.0)
        rows.append((f"r{i:04d}", float(xi), float(y[i]), label))
    return rows


def write_source(spark, tmp_path, rows) -> None:
    spark.createDataFrame(rows, "id string, x double, y double, label string").coalesce(1) \
        .write.mode("overwrite").parquet(str(tmp_path / "src"))  # fmt: skip


def test_drift_fires_the_right_check_and_fail_stops_the_run_before_any_write(spark, tmp_path, capsys):
    suite = {"name": "drift", "expectations": [{"type": "expect_column_values_to_not_be_null",
                                                "kwargs": {"column": "x"}, "meta": {"name": "x_present", "policy": "drop"}}]}  # fmt: skip
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    config = {"dataset": "drift", "kind": "tabular", "lake_root": "lake", "suite": "suite.json",
              "source": {"path": "src", "format": "parquet"}, "split": {"folds": 3},
              "columns": {"id": "id", "label": "label", "features": ["x", "y"]},
              "validate": {"data_docs": False, "anomalies": {"min_runs": 3, "checks": CHECKS}},
              "dedup": {"exact": False, "near": {"enabled": False}}}  # fmt: skip
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(tmp_path / "drift.yaml")
    lake = tables.Lake(cfg.lake_dir)
    assert main(["metrics", str(tmp_path / "drift.yaml")]) == 0  # before any run: said, not an error
    assert "no metrics recorded" in capsys.readouterr().out
    for night, n in enumerate((300, 330, 360), 1):  # the baseline: a source that grows by 30 rows a night
        write_source(spark, tmp_path, source(n))
        reports = run_pipeline(spark, cfg, f"night-{night}", STAGES)
        assert all(not r.details.get("anomalies") for r in reports)

    # Night 4: the 30 new rows drift (x by five deviations, and class c is gone from them).
    write_source(spark, tmp_path, source(390, shift_from=360, drop_class_from=360))
    reports = {r.stage: r for r in run_pipeline(spark, cfg, "night-4", STAGES)}
    fired = {a["metric"]: a["policy"] for r in reports.values() for a in r.details.get("anomalies", [])}
    assert fired["batch.mean.x"] == "warn" and fired["batch.class_share.c"] == "warn"
    assert set(fired) <= {"batch.mean.x", "batch.class_share.a", "batch.class_share.b", "batch.class_share.c"}
    # Quiet: the batch's size (+8 %), y's batch mean, null fractions, silver's class shares (c: 1/3 -> 0.31).
    page = parse(write_report(spark, cfg, "night-4"))  # the run report: the anomalies, a trend plot for each
    assert page.sections[:2] == ["stages", "history"]
    assert "batch.mean.x" in " ".join(page.text) and "robust z-score" in " ".join(page.text)
    trends = [alt for alt, _ in page.images if alt.startswith("trend of ")]
    assert "trend of batch.mean.x" in trends and "trend of batch.class_share.c" in trends
    silver_before = tables.version(spark, lake.path("silver"))
    quarantine_before = tables.version(spark, lake.path("quarantine"))

    # Night 5: half of last night's rows. rows_read's check has policy fail: validate stops before its write.
    write_source(spark, tmp_path, source(195))
    with pytest.raises(DataFailedError, match=r"validate stopped by anomaly check.*rows_read = 195, previous run 390"):
        run_pipeline(spark, cfg, "night-5", STAGES)
    assert tables.version(spark, lake.path("silver")) == silver_before
    assert tables.version(spark, lake.path("quarantine")) == quarantine_before
    rows = [r.asDict() for r in tables.read(spark, lake.path("metrics")).collect()]
    failed = [r for r in rows if r["run_id"] == "night-5" and r["anomaly"]]
    assert [(r["metric"], r["anomaly"].split(":")[0]) for r in failed] == [("rows_read", "fail")]
    assert not any(r["run_id"] == "night-5" and r["stage"] == "curate" for r in rows)  # curate never ran

    # One row per (run, stage, metric); re-running night 4 replaces its rows instead of adding to them.
    keys = [(r["run_id"], r["stage"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))
    before = sorted(k for k in keys if k[0] == "night-4")
    run_pipeline(spark, cfg, "night-4", ["validate"])
    rows = [r.asDict() for r in tables.read(spark, lake.path("metrics")).collect()]
    assert sorted((r["run_id"], r["stage"], r["metric"]) for r in rows if r["run_id"] == "night-4") == before
    assert {r["run_id"] for r in rows} == {f"night-{i}" for i in range(1, 6)}

    # `fulcrum metrics`: the history as a table, the anomalies marked and listed.
    capsys.readouterr()
    assert main(["metrics", str(tmp_path / "drift.yaml"), "--metric", "rows_read", "--metric", "batch.mean.x"]) == 0
    out = capsys.readouterr().out
    assert "night-1" in out and "night-5" in out and "195 !" in out
    assert "night-5 ingest rows_read: fail: changed -50% from the previous run" in " ".join(out.split())
    assert "night-4 validate batch.mean.x: warn: robust z-score" in " ".join(out.split())
    assert main(["metrics", str(tmp_path / "drift.yaml"), "--metric", "no_such_metric.*"]) == 0
    none = capsys.readouterr().out
    assert "no metrics recorded" in none and "no_such_metric" in none
