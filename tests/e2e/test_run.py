"""`fulcrum run`: the pipeline as one command, stage selection, structured stage lines, idempotent
re-runs recorded as attempts, the HTML run report."""

import json
from pathlib import Path

import pytest

from jobs.cli import main
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
    assert "'clean' is not a stage" in err and "ingest, validate, curate, audit, oversample, train" in err


def test_report_of_a_run_shows_validation_duplicates_and_thumbnails(spark, curated, lake_copy, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    from jobs import cli

    # The report's tables are read by delta-rs from the driver: `fulcrum report` starts no Spark session.
    monkeypatch.setattr(cli, "_spark", lambda cfg: pytest.fail("fulcrum report started Spark"))
    cfg = lake_copy(curated["digits"])
    config = str(Path(cfg.base_dir) / "digits.yaml")
    sets = ["--set", f"lake_root={cfg.lake_root}"]
    assert main(["report", config, "c-1", *sets]) == 0  # the curate run of the fixture
    html = Path(cfg.reports_dir) / "c-1" / "report.html"
    assert str(html) in capsys.readouterr().out.replace("\n", "")
    page = parse(html)
    assert page.sections == ["stages", "history", "validation", "quarantine", "duplicates", "audit", "balance", "cv"]
    assert "exact_duplicate" in page.text and "Training did not run in this run." in page.text
    assert "The label audit did not run in this run." in page.text
    kept = [decode(src) for alt, src in page.images if alt.startswith("kept ")]
    dropped = [decode(src) for alt, src in page.images if alt.startswith("dropped ")]
    assert kept and dropped and max(im.size[0] for im in kept + dropped) <= 48
    assert [alt for alt, _ in page.images if alt == "class counts per fold"]
    assert render(html, tmp_path / "report.png") is None or (tmp_path / "report.png").stat().st_size > 0

    assert main(["report", config, "v-1", *sets]) == 0  # the validate run: expectations, Data Docs link
    page = parse(Path(cfg.reports_dir) / "v-1" / "report.html")
    assert "../data_docs/index.html" in page.links and "image_outside_root" in page.text
    assert main(["report", config, "nosuchrun", *sets]) == 2
    assert "fulcrum runs CONFIG" in capsys.readouterr().err


@pytest.mark.parametrize("run_id", ["c-1", "v-1", None])
def test_the_reports_driver_reads_equal_sparks(spark, curated, run_id):
    """delta-rs (DataFusion SQL from the driver) and Spark read the same attempts, quarantine counts and duplicate
    clusters (largest first, their first members, thumbnails) of a run; None: the newest run."""
    from jobs import report
    from jobs.lakehouse import tables

    cfg = curated["digits"]
    lake = tables.Lake(cfg.lake_dir)
    mine, rows, quarantine, clusters = report._from_driver(lake, cfg, run_id)
    theirs, s_rows, s_quarantine, s_clusters = report._from_spark(spark, lake, cfg, run_id)
    assert mine == theirs and rows and [report._attempt(r) for r in rows] == [report._attempt(r) for r in s_rows]
    key = lambda q: (q["stage"], q["reason"])  # noqa: E731 - ties in count come in either order
    assert quarantine and sorted(quarantine, key=key) == sorted(s_quarantine, key=key)
    assert [q["rows"] for q in quarantine] == [q["rows"] for q in s_quarantine]
    if mine == "c-1":
        assert clusters and all(c["kept_thumb"] and c["dropped"] for c in clusters)
    assert [(c["kept"], c["size"], c["kept_thumb"], c["dropped"]) for c in clusters] == \
        [(c["kept"], c["size"], c["kept_thumb"], c["dropped"]) for c in s_clusters]  # fmt: skip
