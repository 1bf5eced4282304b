"""Validate: run the dataset's Great Expectations suite on bronze and quarantine failing rows.

The whole suite's result is in GX's format (saved as GX JSON, rendered into the Data Docs
site). Row-level and simple aggregate expectations are evaluated in one fused Spark pass
(``jobs.validation.fused``) and go through GX's own validation logic; the rest run on GX's Spark
engine. Row-level expectations with policy ``drop`` also tag each failing row with the
names of the expectations it failed; tagged rows go to quarantine (reason = the first name,
reasons = all), the rest flow on. A ``fail`` expectation that does not pass stops the job
(exit 1) before anything is written downstream.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import PipelineConfig
from jobs.errors import ConfigError, DataFailedError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.metrics import RECORDER, as_rows
from jobs.stage import StageReport, StageResult
from jobs.validation import fused
from jobs.validation.probe import probe_images
from jobs.validation.profile import metric_exprs, metric_values
from jobs.validation.suites import Rule, load_suite
from training.contract import write_json

log = logging.getLogger(__name__)
STAGE = "validate"


def _context(docs_dir: str | None = None):
    """An ephemeral GX context; with ``docs_dir``, a local Data Docs site named ``fulcrum`` there."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir:
        ctx.add_data_docs_site(site_name="fulcrum", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })  # fmt: skip
    return ctx


def run_gx(df: DataFrame, suite, dataset: str, docs_dir: str | None = None, partial: int = 20):
    """Validate ``df`` with GX's own Spark engine, every expectation (the reference fulcrum is measured against)."""
    import great_expectations as gx

    ctx = _context(docs_dir)
    suite = ctx.suites.add(suite)
    batch = ctx.data_sources.add_spark(name="lake").add_dataframe_asset(name=dataset)
    definition = batch.add_batch_definition_whole_dataframe("bronze")
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name=dataset, data=definition, suite=suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["fulcrum"])] if docs_dir else []
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name=f"{dataset}-validate", validation_definitions=[validation], actions=actions,
        result_format=fused.runtime_configuration(partial)["result_format"],
    ))  # fmt: skip
    result = checkpoint.run(batch_parameters={"dataframe": df})
    return next(iter(result.run_results.values()))


def run_suite(df: DataFrame, suite, rules: list[Rule], dataset: str, docs_dir: str | None = None,
              partial: int = 20, run_name: str | None = None, extra: dict | None = None):  # fmt: skip
    """The whole suite in GX's result format: fused expectations in one pass, the rest on GX's engine.

    Returns (ExpectationSuiteValidationResult in suite order, fused.Evaluation). With ``docs_dir``
    the result is stored and the Data Docs site there is rebuilt.
    """
    import datetime

    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.validator.validation_statistics import calc_validation_statistics

    plan = fused.plan(df, suite, rules, partial)
    evaluation = fused.evaluate(df, plan, rules, partial, extra)
    by_name = dict(evaluation.results)
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.datetime.now(datetime.UTC))
    meta: dict[str, Any] = {}
    if plan.gx:  # uniqueness, quantiles, row conditions, ...: GX's engine, on the same DataFrame
        rest = ExpectationSuite(name=suite.name, expectations=[e.configuration for e, _ in plan.gx])
        gx_result = run_gx(df, rest, dataset, None, partial)
        by_name.update({r.expectation_config.meta.get("name"): r for r in gx_result.results})
        meta = {k: v for k, v in gx_result.meta.items() if k not in ("checkpoint_id", "validation_id")}
    import great_expectations as gx

    meta.update({"great_expectations_version": gx.__version__, "run_id": run_id, "validation_time": run_id.run_time,
                 "fulcrum": {"fused": [r.name for _, r, _ in plan.fused], "gx_engine": [r.name for _, r in plan.gx],
                             "limit_reads": evaluation.limit_reads}})  # fmt: skip
    meta.setdefault("batch_spec", {"batch_data": "SparkDataFrame"})
    meta.setdefault("active_batch_definition", {"datasource_name": "lake", "data_connector_name": "fluent",
                                                "data_asset_name": dataset, "batch_identifiers": {}})  # fmt: skip
    results = [by_name[r.name] for r in rules]
    stats = calc_validation_statistics(results)
    result = ExpectationSuiteValidationResult(
        success=stats.success, results=results, suite_name=suite.name, meta=meta,
        statistics={"evaluated_expectations": stats.evaluated_expectations,
                    "successful_expectations": stats.successful_expectations,
                    "unsuccessful_expectations": stats.unsuccessful_expectations,
                    "success_percent": stats.success_percent},
    )  # fmt: skip
    if docs_dir:
        _build_docs(result, suite, docs_dir, dataset, run_id)
    return result, evaluation


def _build_docs(result, suite, docs_dir: str, dataset: str, run_id) -> None:
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    ctx = _context(docs_dir)
    ctx.suites.add(suite)
    suite_id = ExpectationSuiteIdentifier(name=suite.name)
    key = ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=dataset)
    ctx.validation_results_store.set(key, result)
    ctx.build_data_docs(site_names=["fulcrum"], resource_identifiers=[key, suite_id])


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
             partial: int = 20, run_name: str | None = None, profile: list[str] | None = None) -> StageResult:  # fmt: skip
    """Results for the whole suite (one fused pass + GX for the rest), kept rows, rejected rows with reasons;
    with ``profile`` (columns), the metric history's column profile from the same pass (``details["metrics"]``;
    ``run_name``'s batch too)."""
    start = time.perf_counter()
    extra = metric_exprs(df, profile, run_name) if profile else None
    gx_result, evaluation = run_suite(df, suite, rules, dataset, docs_dir, partial, run_name, extra)
    summary = summarize(gx_result, rules)
    report = StageReport(stage=STAGE, rows_in=evaluation.rows_in, rows_out=evaluation.rows_in - evaluation.rejected)
    report.dropped, report.removed = evaluation.dropped, evaluation.rejected
    report.details.update({
        "expectations": len(rules), "failed_expectations": sum(not s["success"] for s in summary),
        "summary": summary, "gx_success": bool(gx_result.success), "gx_result": gx_result.to_json_dict(),
        "fused": gx_result.meta["fulcrum"]["fused"], "gx_engine": gx_result.meta["fulcrum"]["gx_engine"],
    })  # fmt: skip
    rows = evaluation.rows_in
    report.details["metrics"] = {
        "rows": rows, "quarantined": evaluation.rejected, "quarantine_rate": evaluation.rejected / max(rows, 1),
        **{f"quarantined.{k}": v for k, v in evaluation.dropped.items()}, **metric_values(evaluation.extra)}  # fmt: skip
    report.seconds = time.perf_counter() - start
    kept = df.filter(~fused.any_failure([r for r in rules if r.policy == "drop"]))
    return StageResult(kept=kept, rejected=evaluation.rejected_rows, report=report)


def failed_fail_policies(report: StageReport) -> list[dict]:
    return [s for s in report.details["summary"] if s["policy"] == "fail" and not s["success"]]


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: bronze (pinned version) → GX report + Data Docs, quarantine rows for ``drop`` failures."""
    if not cfg.suite:
        raise ConfigError(f"{cfg.dataset}: no suite configured", fix="set `suite:` to a GX suite JSON file")
    suite, rules = load_suite(cfg.resolve(cfg.suite), cfg.validate_.policies)
    lake = tables.Lake(cfg.lake_dir)
    report_dir = Path(cfg.reports_dir) / run_id
    with ledger.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        bronze_version = _require_bronze(spark, lake, cfg)
        record.inputs.append(("bronze", lake.path("bronze"), bronze_version))
        rows = tables.read(spark, lake.path("bronze"), bronze_version)
        if cfg.images:  # the image suite's expectations run on the probe's columns
            rows = probe_images(rows, cfg.images.path_column, cfg.resolve(cfg.images.root))
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # read by the fused pass and the quarantine write
        docs = str(Path(cfg.reports_dir) / "data_docs") if cfg.validate_.data_docs else None
        try:
            # The metric history's column profile rides in the fused pass, only when the history is on.
            profiled = ([f.name for f in cfg.columns.features] + [cfg.columns.label]
                        if cfg.validate_.anomalies.enabled else None)  # fmt: skip
            result = validate(rows, suite, rules, cfg.dataset, docs, cfg.validate_.partial_unexpected, run_id, profiled)
            report = result.report
            _finish(spark, cfg, lake, run_id, result, record, report_dir)
        finally:
            rows.unpersist()
    log.info("validate %s: %d rows, %d quarantined %s, %d/%d expectations passed in %.1fs -> %s", cfg.dataset,
             report.rows_in, report.rows_in - report.rows_out, report.dropped or "", len(rules) -
             report.details["failed_expectations"], len(rules), report.seconds, report_dir)  # fmt: skip
    return report


def _finish(spark: SparkSession, cfg: PipelineConfig, lake: tables.Lake, run_id: str, result: StageResult, record,
            report_dir: Path):  # fmt: skip
    """Save the report; stop on a failed ``fail`` expectation or a ``fail`` anomaly, else write quarantine (one
    commit)."""
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
    try:  # this run's metrics (ingest's too) against the history: a `fail` anomaly stops here, like a fail expectation
        anomalies = RECORDER.check(spark, cfg, run_id, STAGE, report.details["metrics"])
    except DataFailedError as error:
        error.report = report
        raise
    report.details["anomalies"] = as_rows(anomalies)
    version = write_quarantine(lake, result.rejected, run_id, rows=report.rows_in - report.rows_out)
    record.outputs.append(("quarantine", lake.path("quarantine"), version))
    report.details["quarantine_version"] = version


def write_quarantine(lake: tables.Lake, rejected: DataFrame, run_id: str, rows: int | None = None) -> int:
    """Replace this stage's quarantine rows with ``rejected`` (one commit; the table is partitioned by stage).
    ``rows``: how many ``rejected`` holds, when known (the fused pass counted them); with none to write and none
    quarantined by the last run, no commit is made."""
    rejected = rejected.withColumn("stage", F.lit(STAGE)).withColumn("run_id", F.lit(run_id))
    return tables.replace_partitions(rejected, lake.path("quarantine"), "stage", [STAGE], run_id, STAGE, rows)


def _require_bronze(spark: SparkSession, lake: tables.Lake, cfg: PipelineConfig) -> int:
    version = tables.version(spark, lake.path("bronze"))
    if version is None:
        raise ConfigError(f"{cfg.dataset}: bronze does not exist yet at {lake.path('bronze')}",
                          fix="run `fulcrum ingest CONFIG` first")  # fmt: skip
    return version


def _save(report: StageReport, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(report.details["gx_result"], folder / "validation.json")
    write_json({"rows_in": report.rows_in, "rows_out": report.rows_out, "dropped": report.dropped,
                "summary": report.details["summary"]}, folder / "validation_summary.json")
