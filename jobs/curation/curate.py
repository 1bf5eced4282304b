"""Curate: validated bronze → clean → dedup (find, remove) → split → silver (one commit) + quarantine.

The validated rows are bronze at its latest version minus the rows the validate stage
quarantined (when the dataset has a suite). Image rows are probed again for their
content hash and perceptual hash. Rows rejected by clean or dedup go to quarantine as
they were in bronze, with ``reason``/``reasons``, the stage and the run id; re-running
replaces those rows and silver as a whole, so nothing is ever duplicated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import plots
from jobs.config import PipelineConfig
from jobs.curation import clean, dedup, split
from jobs.errors import ConfigError, DataFailedError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.metrics import RECORDER, as_rows
from jobs.stage import StageReport
from jobs.validation.probe import THUMB_FIELD, probe_images
from training.contract import write_json

log = logging.getLogger(__name__)
STAGE = "curate"
SUB_STAGES = ("clean", "dedup")
REPLACED = ("clean", "dedup", "audit")  # the quarantine's partitions a curate run replaces (the audit's: it re-applies)
THUMBS = THUMB_FIELD[0]  # the probe's thumbnails: dedup reads them, no table keeps them


def validated_rows(spark: SparkSession, cfg: PipelineConfig, lake: tables.Lake) -> tuple[DataFrame, int]:
    """Bronze at its latest version without the rows validate quarantined; (rows, bronze version)."""
    version = tables.version(spark, lake.path("bronze"))
    if version is None:
        raise ConfigError(f"{cfg.dataset}: bronze does not exist yet at {lake.path('bronze')}",
                          fix="run `fulcrum ingest CONFIG` first")  # fmt: skip
    rows = tables.read(spark, lake.path("bronze"), version)
    if cfg.suite:
        if not _validated(spark, lake, version):
            raise ConfigError(f"{cfg.dataset}: bronze v{version} has not been validated",
                              fix="run `fulcrum validate CONFIG` first (or `fulcrum run CONFIG`)")  # fmt: skip
        quarantined = tables.read(spark, lake.path("quarantine")).where(F.col("stage") == "validate").select("sample_id")
        rows = rows.join(quarantined, "sample_id", "left_anti")
    return rows, version


def _validated(spark: SparkSession, lake: tables.Lake, bronze_version: int) -> bool:
    """Did the latest validate run succeed, on this bronze version?"""
    last = ledger.last_attempt(spark, lake, "validate")
    if last is None or last["status"] != "succeeded" or not tables.exists(spark, lake.path("quarantine")):
        return False
    return any(i["name"] == "bronze" and i["version"] == bronze_version for i in last["inputs"] or [])


def curate(rows: DataFrame, cfg: PipelineConfig, held: list[DataFrame] | None = None,
           label_issues: DataFrame | None = None) -> tuple[DataFrame, DataFrame, list[StageReport]]:  # fmt: skip
    """(silver rows, rejected sample ids with reasons and stage, reports) for validated ``rows``
    (``label_issues``: the audit's table, applied by clean as ``clean.label_issues`` says).

    Intermediate results read twice are persisted and appended to ``held``: the caller
    unpersists them once the outputs are written."""
    held = held if held is not None else []
    cleaned = clean.clean(rows, cfg, label_issues)
    kept = cleaned.kept.persist(StorageLevel.MEMORY_AND_DISK)
    held.append(kept)
    how = dedup.plan(kept, cfg)
    found = dedup.find(kept, cfg, how)
    deduped = dedup.remove(found, cfg, how)
    survivors = deduped.kept.drop("exact_key", THUMBS).persist(StorageLevel.MEMORY_AND_DISK)
    held.append(survivors)
    folds = split.split(survivors, cfg, held)  # silver: persisted, its ranking computed once
    none = F.lit(None).cast("string")
    rejected = (cleaned.rejected.select("sample_id", "reasons", "reason", none.alias("dup_group"),
                                        none.alias("duplicate_of"), F.lit("clean").alias("stage"))
                .unionByName(deduped.rejected.select("sample_id", "reasons", "reason", "dup_group", "duplicate_of",
                                                     F.lit("dedup").alias("stage"))))  # fmt: skip
    return folds.kept, rejected, [cleaned.report, deduped.report, folds.report]


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: validated bronze → silver (one overwrite commit) + quarantine rows of clean and dedup (one commit)."""
    lake = tables.Lake(cfg.lake_dir)
    with ledger.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        start = time.perf_counter()
        rows, bronze_version = validated_rows(spark, cfg, lake)
        record.inputs.append(("bronze", lake.path("bronze"), bronze_version))
        if cfg.images:
            rows = probe_images(rows, cfg.images.path_column, cfg.resolve(cfg.images.root), thumbnails=True)
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        held = [rows]
        issues = _label_issues(spark, cfg, lake, record)
        try:
            silver, rejected, reports = curate(rows, cfg, held, issues)  # silver is persisted (held)
            counts, batch = _require_classes(silver, cfg, run_id)
            anomalies = RECORDER.check(spark, cfg, run_id, STAGE, _metrics(reports, counts, batch))  # before any write
            quarantine = rows.drop(THUMBS).join(rejected, "sample_id").withColumn("run_id", F.lit(run_id))
            # The rows clean and dedup rejected, counted by their reports: a small quarantine is one delta-rs commit
            # from the driver, none at all when there is nothing to quarantine and nothing to clear.
            q_version = tables.replace_partitions(quarantine, lake.path("quarantine"), "stage", list(REPLACED), run_id,
                                                  STAGE, rows=sum(r.rows_in - r.rows_out for r in reports[:2]))  # fmt: skip
            props = {"fulcrum.run_id": run_id, "fulcrum.kind": cfg.kind, "fulcrum.folds": cfg.split.folds,
                     "fulcrum.label": cfg.columns.label, "fulcrum.bronze_version": bronze_version}  # fmt: skip
            s_version = tables.overwrite(silver, lake.path("silver"), run_id, STAGE, props)
        finally:
            for df in held:
                df.unpersist()
        report = StageReport(stage=STAGE, rows_in=reports[0].rows_in, rows_out=reports[-1].rows_out,
                             removed=reports[0].rows_in - reports[-1].rows_out)  # fmt: skip
        for r in reports[:2]:
            report.dropped.update(r.dropped)
        report.details.update({"stages": {r.stage: {"rows_in": r.rows_in, "rows_out": r.rows_out,
                                                    "dropped": r.dropped, "seconds": round(r.seconds, 2),
                                                    **r.details} for r in reports},
                               "silver_version": s_version, "quarantine_version": q_version,
                               "anomalies": as_rows(anomalies)})  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.outputs += [
            ("silver", lake.path("silver"), s_version),
            ("quarantine", lake.path("quarantine"), q_version),
        ]
        record.counts.update(report.counts())
        _save(report, Path(cfg.reports_dir) / run_id)
    log.info("curate %s: %d rows in, %d to silver (v%d), quarantined %s in %.1fs", cfg.dataset, report.rows_in,
             report.rows_out, s_version, report.dropped or "nothing", report.seconds)  # fmt: skip
    return report


def _label_issues(spark: SparkSession, cfg: PipelineConfig, lake: tables.Lake, record: ledger.StageRun) -> DataFrame | None:
    """The audit's label_issues table (an input of this run) when ``clean.label_issues`` acts on it."""
    path = lake.path("label_issues")
    if cfg.clean.label_issues == "report" or not tables.exists(spark, path):
        if cfg.clean.label_issues != "report":  # the first run: its audit comes after curate and acts on silver
            log.info("%s: no label audit yet; this run's audit (after curate) applies its verdicts", cfg.dataset)
        return None
    version = tables.version(spark, path)
    record.inputs.append(("label_issues", path, version))
    return tables.read(spark, path, version)


def _metrics(reports: list[StageReport], counts: dict[str, int], batch: dict[str, int]) -> dict[str, float]:
    """curate's metrics for the history: rows, duplicate rate, quarantine reasons, class counts and shares, in
    silver and (``batch.*``) among the rows this run ingested."""
    cleaned, deduped, _ = reports
    duplicates = sum(v for k, v in deduped.dropped.items() if "duplicate" in k)
    out = {"silver_rows": sum(counts.values()), "duplicate_rate": duplicates / max(deduped.rows_in, 1),
           **{f"quarantined.{k}": v for r in (cleaned, deduped) for k, v in r.dropped.items()}}  # fmt: skip
    for prefix, per in (("", counts), ("batch.", batch)):
        total = sum(per.values())
        if total:
            out.update({f"{prefix}class_count.{k}": v for k, v in per.items()})
            out.update({f"{prefix}class_share.{k}": v / total for k, v in per.items()})
    return out


def _require_classes(silver: DataFrame, cfg: PipelineConfig, run_id: str = "") -> tuple[dict[str, int], dict[str, int]]:
    """Training needs two classes and at least one row per fold: say so here, before anything is written.
    Returns silver's class counts, and those of the rows this run ingested (one aggregation)."""
    new = (F.col("ingest_run_id") == F.lit(run_id)) if "ingest_run_id" in silver.columns else F.lit(False)
    rows = silver.groupBy(F.col(f"`{cfg.columns.label}`").alias("label"), new.alias("new")).count().collect()
    counts: dict[str, int] = {}
    batch: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + r["count"]
        if r["new"]:
            batch[r["label"]] = r["count"]
    if len(counts) < 2:
        raise DataFailedError(f"{cfg.dataset}: silver would hold {sum(counts.values())} rows of "
                              f"{len(counts)} class(es) {sorted(counts)}; training needs at least two",
                              fix="check the label column, clean.labels and the quarantine reasons")  # fmt: skip
    small = {k: v for k, v in counts.items() if v < cfg.split.folds}
    if small:
        raise DataFailedError(f"{cfg.dataset}: classes with fewer rows than folds ({cfg.split.folds}): {small}",
                              fix="lower split.folds or add data for those classes")  # fmt: skip
    return counts, batch


def _save(report: StageReport, folder: Path) -> None:
    """curate.json (every statistic) and folds.png (class counts per fold)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots.fold_counts(report.details["stages"]["split"]["class_counts_per_fold"], folder / "folds.png")
    write_json({"rows_in": report.rows_in, "rows_out": report.rows_out, "dropped": report.dropped, **report.details},
               folder / "curate.json")
