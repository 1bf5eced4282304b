"""Validate: run the dataset's Great Expectations suite on bronze with GX's Spark engine.

GX's result is the report (saved as GX JSON) and the Data Docs site. Row-level
expectations with policy ``drop`` also tag each failing row with the names of the
expectations it failed; tagged rows go to quarantine (reason = the first name, reasons =
all), the rest flow on. A ``fail`` expectation that does not pass stops the job (exit 1)
before anything is written downstream.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import io, runs
from jobs.config import PipelineConfig
from jobs.errors import ConfigError, DataFailedError
from jobs.probe import probe_images
from jobs.stage import StageReport, StageResult
from jobs.suites import Rule, load_suite

log = logging.getLogger(__name__)
STAGE = "validate"


def tag_failures(df: DataFrame, rules: list[Rule]) -> DataFrame:
    """Add ``reasons``: names of the ``drop`` expectations each row fails, in suite order."""
    drops = [r for r in rules if r.policy == "drop"]
    if not drops:
        return df.withColumn("reasons", F.array().cast("array<string>"))
    tags = F.array(*[F.when(r.fails(), F.lit(r.name)) for r in drops])
    return df.withColumn("reasons", F.filter(tags, lambda x: x.isNotNull()))


def run_gx(df: DataFrame, suite, dataset: str, docs_dir: str | None, partial: int = 20):
    """Validate ``df`` with GX's Spark engine; build Data Docs into ``docs_dir`` when given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir:
        ctx.add_data_docs_site(site_name="fulcrum", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })  # fmt: skip
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["fulcrum"]))
    suite = ctx.suites.add(suite)
    batch = ctx.data_sources.add_spark(name="lake").add_dataframe_asset(name=dataset)
    definition = batch.add_batch_definition_whole_dataframe("bronze")
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name=dataset, data=definition, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name=f"{dataset}-validate", validation_definitions=[validation], actions=actions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": partial},
    ))  # fmt: skip
    result = checkpoint.run(batch_parameters={"dataframe": df})
    return next(iter(result.run_results.values()))


def summarize(gx_result, rules: list[Rule]) -> list[dict[str, Any]]:
    """One row per expectation, in suite order: name, policy, success, unexpected count/percent."""
    by_name = {r.expectation_config.meta.get("name"): r for r in gx_result.results}
    rows = []
    for rule in rules:
        res = by_name[rule.name]
        out = res.result or {}
        rows.append({
            "name": rule.name, "type": rule.type, "column": rule.column, "policy": rule.policy,
            "success": bool(res.success), "unexpected_count": out.get("unexpected_count"),
            "unexpected_percent": out.get("unexpected_percent"), "observed_value": out.get("observed_value"),
            "error": (res.exception_info or {}).get("exception_message") if not res.success else None,
        })  # fmt: skip
    return rows


def validate(df: DataFrame, suite, rules: list[Rule], dataset: str, docs_dir: str | None = None,
             partial: int = 20) -> StageResult:  # fmt: skip
    """GX on ``df``, then split its rows into kept and rejected (with reasons), one aggregation for counts."""
    start = time.perf_counter()
    gx_result = run_gx(df, suite, dataset, docs_dir, partial)
    summary = summarize(gx_result, rules)
    tagged = tag_failures(df, rules)
    drops = [r.name for r in rules if r.policy == "drop"]
    agg = tagged.agg(
        F.count(F.lit(1)).alias("rows_in"),
        F.sum(F.when(F.size("reasons") > 0, 1).otherwise(0)).alias("rejected"),
        *[F.sum(F.when(F.array_contains("reasons", n), 1).otherwise(0)).alias(n) for n in drops],
    ).first()
    report = StageReport(stage=STAGE, rows_in=agg["rows_in"], rows_out=agg["rows_in"] - (agg["rejected"] or 0))
    report.dropped = {n: int(agg[n] or 0) for n in drops if agg[n]}
    report.details.update({
        "expectations": len(rules), "failed_expectations": sum(not s["success"] for s in summary),
        "summary": summary, "gx_success": bool(gx_result.success), "gx_result": gx_result.to_json_dict(),
    })  # fmt: skip
    report.seconds = time.perf_counter() - start
    kept = tagged.filter(F.size("reasons") == 0).drop("reasons")
    rejected = tagged.filter(F.size("reasons") > 0).withColumn("reason", F.get("reasons", 0))
    return StageResult(kept=kept, rejected=rejected, report=report)


def failed_fail_policies(report: StageReport) -> list[dict]:
    return [s for s in report.details["summary"] if s["policy"] == "fail" and not s["success"]]


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: bronze (pinned version) → GX report + Data Docs, quarantine rows for ``drop`` failures."""
    if not cfg.suite:
        raise ConfigError(f"{cfg.dataset}: no suite configured", fix="set `suite:` to a GX suite JSON file")
    suite, rules = load_suite(cfg.resolve(cfg.suite), cfg.validate_.policies)
    lake = io.Lake(cfg.lake_dir)
    report_dir = Path(cfg.reports_dir) / run_id
    with runs.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        bronze_version = _require_bronze(spark, lake, cfg)
        record.inputs.append(("bronze", lake.path("bronze"), bronze_version))
        rows = io.read(spark, lake.path("bronze"), bronze_version)
        if cfg.images:  # the image suite's expectations run on the probe's columns
            rows = probe_images(rows, cfg.images.path_column, cfg.resolve(cfg.images.root))
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # GX scans once per metric: probe/read once
        docs = str(Path(cfg.reports_dir) / "data_docs") if cfg.validate_.data_docs else None
        try:
            result = validate(rows, suite, rules, cfg.dataset, docs, cfg.validate_.partial_unexpected)
            report = result.report
            _finish(cfg, lake, run_id, result, record, report_dir)
        finally:
            rows.unpersist()
    log.info("validate %s: %d rows, %d quarantined %s, %d/%d expectations passed in %.1fs -> %s", cfg.dataset,
             report.rows_in, report.rows_in - report.rows_out, report.dropped or "", len(rules) -
             report.details["failed_expectations"], len(rules), report.seconds, report_dir)  # fmt: skip
    return report


def _finish(cfg: PipelineConfig, lake: io.Lake, run_id: str, result: StageResult, record, report_dir: Path):
    """Save the report; stop on a failed ``fail`` expectation, else write quarantine (one commit)."""
    report = result.report
    _save(report, report_dir)
    record.counts.update(report.counts())
    failed = failed_fail_policies(report)
    if failed:
        names = ", ".join(f"{s['name']} ({s['type']})" for s in failed)
        error = DataFailedError(f"{cfg.dataset}: expectations with policy fail did not pass: {names}",
                                fix=f"see {report_dir / 'validation.json'} and the Data Docs; nothing was written downstream")  # fmt: skip
        error.report = report
        raise error
    rejected = result.rejected.withColumn("stage", F.lit(STAGE)).withColumn("run_id", F.lit(run_id))
    version = io.replace_where(rejected, lake.path("quarantine"), f"stage = '{STAGE}'", run_id, STAGE)
    record.outputs.append(("quarantine", lake.path("quarantine"), version))
    report.details["quarantine_version"] = version


def _require_bronze(spark: SparkSession, lake: io.Lake, cfg: PipelineConfig) -> int:
    version = io.version(spark, lake.path("bronze"))
    if version is None:
        raise ConfigError(f"{cfg.dataset}: bronze does not exist yet at {lake.path('bronze')}",
                          fix="run `fulcrum ingest CONFIG` first")  # fmt: skip
    return version


def _save(report: StageReport, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.json").write_text(json.dumps(report.details["gx_result"], indent=2, default=str))
    (folder / "validation_summary.json").write_text(json.dumps(
        {"rows_in": report.rows_in, "rows_out": report.rows_out, "dropped": report.dropped,
         "summary": report.details["summary"]}, indent=2, default=str))  # fmt: skip
