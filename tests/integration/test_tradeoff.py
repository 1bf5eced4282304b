"""The trade-off on the audited cancer lake: the table of levels on real Spark/Delta (same validation rows
for every level, no row training on its own copy, nested fractions), then the grid on real Ray through the
stage, with its plot and HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from jobs.analysis import tradeoff
from jobs.errors import ConfigError
from jobs.lakehouse import tables
from tests.html_report import parse

pytestmark = [pytest.mark.spark, pytest.mark.ray]


def _with(cfg, **tradeoff_keys):
    return cfg.model_copy(update={"tradeoff": cfg.tradeoff.model_copy(update=tradeoff_keys)})


def test_every_level_is_scored_on_the_same_rows_and_no_row_trains_on_its_copy(spark, audited, lake_copy):
    cfg = lake_copy(audited[0])
    lake = tables.Lake(cfg.lake_dir)
    table, info = tradeoff.build_table(spark, cfg, lake)
    rows = table.collect()
    k = 2
    assert info["levels"] == ["raw", "clean", "audited", "oversampled"] and info["left_out"] == {}
    validation = {lv: {(r["sample_id"], r["fold"]) for r in rows if r["level"] == lv and r["synthetic_for"] is None
                       and 0 <= r["fold"] < k} for lv in info["levels"]}  # fmt: skip
    assert validation["raw"] == validation["clean"] == validation["audited"] == validation["oversampled"]
    assert len(validation["clean"]) > 100
    fold_of = dict(validation["clean"])

    # raw: validated rows as bronze has them, training only, never in the fold of the row they copy
    raw = [r for r in rows if r["level"] == "raw" and r["fold"] == k]
    assert len(raw) == info["raw"]["rows"] and info["raw"]["unusable_labels"] > 0  # the injected label variants
    dups = {r["sample_id"]: r["duplicate_of"] for r in
            tables.read(spark, lake.path("quarantine")).where("stage = 'dedup'").collect()}  # fmt: skip
    copies = [r for r in raw if dups.get(r["sample_id"]) in fold_of]
    assert copies, "the sample's injected duplicates are in the raw level"
    for r in copies:
        assert r["dropped_for"] == [fold_of[dups[r["sample_id"]]]]
    for r in raw:
        if r["sample_id"] in fold_of:
            assert r["dropped_for"] == [fold_of[r["sample_id"]]]
    assert all(r["dropped_for"] == list(range(k)) for r in rows if r["level"] == "raw" and r["fold"] < k)
    # a copy draws its original's u, so fractions take copies together
    u = {r["sample_id"]: r["u"] for r in rows if r["level"] == "clean"}
    assert all(r["u"] == u[dups[r["sample_id"]]] for r in copies)
    assert all(0 <= r["u"] < 1 for r in rows)

    # audited: the flagged rows train in no fold; oversampled: neither do they nor their synthetic rows
    flagged = {r["sample_id"] for r in tables.read(spark, lake.path("label_issues")).collect()} & set(fold_of)
    assert flagged and info["flagged"] == len(flagged)
    for r in rows:
        if r["level"] in ("audited", "oversampled") and r["sample_id"] in flagged:
            assert r["dropped_for"] == list(range(k))
        if r["level"] == "audited" and r["sample_id"] not in flagged:
            assert r["dropped_for"] is None
    assert any(r["synthetic_for"] is not None for r in rows if r["level"] == "oversampled")

    # nested fractions: every training row of the 50 % sample is in the 100 % one, and about half as many
    written = table.where(F.col("level").isin("clean", "raw"))
    counts = tradeoff.training_rows(written, [0, 1], [0.5, 1.0])
    for level in ("raw", "clean"):
        for f in range(k):
            half, full = counts[level][0.5][f], counts[level][1.0][f]
            assert 0.3 * full < half < 0.7 * full
    assert counts["clean"][1.0] == [sum(1 for _, g in validation["clean"] if g != f) for f in range(k)]


def test_levels_that_cannot_be_built_are_named(spark, audited, lake_copy, tmp_path):
    import shutil

    cfg = lake_copy(audited[0])
    shutil.rmtree(Path(cfg.lake_dir) / "label_issues")
    _, info = tradeoff.build_table(spark, _with(cfg, levels=["clean", "audited"]), tables.Lake(cfg.lake_dir))
    assert info["levels"] == ["clean"] and "fulcrum audit" in info["left_out"]["audited"]
    with pytest.raises(ConfigError, match="none of the levels"):
        tradeoff.build_table(spark, _with(cfg, levels=["audited"]), tables.Lake(cfg.lake_dir))
    empty = cfg.model_copy(update={"lake_root": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="gold does not exist"):
        tradeoff.build_table(spark, empty, tables.Lake(empty.lake_dir))


def test_the_grid_runs_on_ray_and_writes_curves_plot_and_page(spark, ray_local, audited, lake_copy):
    import ray

    cfg = lake_copy(audited[0])
    cfg = _with(cfg, levels=["raw", "audited"], fractions=[0.5, 1.0], epochs=1)
    cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": ray.get_runtime_context().gcs_address}),
                                 "train": cfg.train.tuned(batch_size=32, hidden=[16])})  # fmt: skip
    report = tradeoff.run(spark, cfg, "t-1")
    assert report.rows_out == 2 * 2 * 2
    folder = Path(cfg.reports_dir) / "t-1"
    result = json.loads((folder / "tradeoff.json").read_text())
    trials = result["trials"]
    assert {(t["level"], t["fraction"], t["fold"]) for t in trials} == {
        (lv, p, f) for lv in ("raw", "audited") for p in (0.5, 1.0) for f in (0, 1)}
    for f in (0, 1):  # the same validation rows for every level and fraction
        assert len({t["val_rows"] for t in trials if t["fold"] == f}) == 1
    for level in ("raw", "audited"):
        pts = result["curves"][level]
        assert pts[0]["rows"] < pts[1]["rows"] and all(0 <= p["mean"] <= 1 for p in pts)
    assert result["conclusion"]["text"] and result["conclusion"]["steps"][0]["to"] == "audited"
    assert (folder / "tradeoff.png").stat().st_size > 0
    page = parse(folder / "tradeoff.html")
    assert page.sections == ["conclusion", "curves", "levels"]
    assert page.images and page.images[0][1].startswith("data:image/png;base64,")
    assert result["conclusion"]["text"][0] in " ".join(page.text)
    lake = tables.Lake(cfg.lake_dir)
    assert tables.version(spark, lake.path("tradeoff")) == 0  # the table of levels is one commit
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    for f in DeltaTable(lake.path("tradeoff")).file_uris():  # clustered by level: filters skip by statistics
        levels = pq.read_table(f, columns=["level"]).column("level").to_pylist()
        assert levels == sorted(levels)
    assert tables.read(spark, lake.path("tradeoff")).count() == report.rows_in
    runs = tables.read(spark, lake.path("runs")).where("stage = 'tradeoff'").collect()
    assert [r["status"] for r in runs] == ["succeeded"]
