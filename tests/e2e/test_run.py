"""`fulcrum run`: the pipeline as one command, stage selection, structured stage lines, idempotent
re-runs recorded as attempts, the HTML run report."""

import json

import pytest

from jobs import io
from jobs.cli import main
from jobs.config import load_config
from tests.html_report import decode, parse, render

pytestmark = pytest.mark.spark


def events(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "stage"')]


def test_stage_selection_errors_exit_2_before_spark(tmp_path, capsys, sample_dir):
    cfg = str(sample_dir / "cancer" / "cancer.yaml")
    assert main(["run", cfg, "--from", "train", "--until", "ingest"]) == 2
    assert "comes after" in capsys.readouterr().err
    assert main(["run", cfg, "--from", "clean"]) == 2
    err = capsys.readouterr().err
    assert "'clean' is not a stage" in err and "ingest, validate, curate, oversample, train" in err


def test_rerun_is_idempotent_recorded_and_reported(spark, sample_dir, tmp_path, capsys):
    sets = ["--set", f"lake_root={tmp_path / 'lake'}", "--set", "split.folds=2"]
    config = str(sample_dir / "cancer" / "cancer.yaml")
    assert main(["run", config, "--until", "validate", "--run-id", "r1", *sets]) == 0
    captured = capsys.readouterr()
    first = events(captured.err)
    assert [e["stage"] for e in first] == ["ingest", "validate"]
    assert all(e["status"] == "succeeded" and e["run_id"] == "r1" and e["seconds"] > 0 for e in first)
    assert first[0]["rows_out"] == first[0]["rows_in"] > 0
    assert first[0]["outputs"][0]["table"] == "bronze" and first[0]["outputs"][0]["path"].endswith("/bronze")
    assert "cancer (run r1): stages" in captured.out

    cfg = load_config(config, {"lake_root": str(tmp_path / "lake")})
    lake = io.Lake(cfg.lake_dir)
    bronze = io.read(spark, lake.path("bronze")).count()
    quarantined = io.read(spark, lake.path("quarantine")).count()
    assert quarantined == first[1]["rows_in"] - first[1]["rows_out"] > 0

    # Run again (as after a crash), further: nothing duplicated, every attempt in the ledger.
    assert main(["run", config, "--until", "curate", "--run-id", "r2", *sets]) == 0
    second = events(capsys.readouterr().err)
    assert [e["stage"] for e in second] == ["ingest", "validate", "curate"]
    assert second[0]["rows_out"] == 0 and second[0]["counts"]["already_in_bronze"] == bronze
    assert io.read(spark, lake.path("bronze")).count() == bronze
    assert io.read(spark, lake.path("quarantine")).where("stage = 'validate'").count() == quarantined
    assert second[2]["outputs"][0]["table"] == "silver"
    assert io.read(spark, lake.path("silver")).count() == second[2]["rows_out"]
    ledger = io.read(spark, lake.path("runs")).groupBy("stage").count().collect()
    assert {r["stage"]: r["count"] for r in ledger} == {"ingest": 2, "validate": 2, "curate": 1}

    # The report of a run: stages, validation with the Data Docs link, quarantine reasons, duplicates, folds.
    html = tmp_path / "lake" / "cancer" / "reports" / "r2" / "report.html"
    page = parse(html)
    assert page.sections == ["stages", "validation", "quarantine", "duplicates", "balance", "cv"]
    assert "../data_docs/index.html" in page.links
    assert "exact_duplicate" in page.text and "near_duplicate" in page.text
    assert "Training did not run in this run." in page.text
    plots = [decode(src) for alt, src in page.images if alt == "class counts per fold"]
    assert len(plots) == 1 and plots[0].size[0] > 100
    assert render(html, tmp_path / "report.png") is None or (tmp_path / "report.png").stat().st_size > 0

    # `fulcrum report` rebuilds it for any run; an unknown run id is a usage error.
    assert main(["report", config, "r1", *sets]) == 0
    assert (tmp_path / "lake" / "cancer" / "reports" / "r1" / "report.html").is_file()
    assert main(["report", config, "nosuchrun", *sets]) == 2
    assert "fulcrum runs CONFIG" in capsys.readouterr().err
