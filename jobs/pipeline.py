"""Wiring: the stages in data-flow order, run for one pipeline config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from pyspark.sql import SparkSession

from jobs import ingest, launch, samples
from jobs.analysis import audit
from jobs.balancing import oversample
from jobs.config import PipelineConfig, load_config
from jobs.console import PROGRESS, run_log
from jobs.curation import curate
from jobs.errors import ConfigError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.ledger import new_run_id
from jobs.lakehouse.metrics import RECORDER
from jobs.stage import StageReport
from jobs.validation import validate

log = logging.getLogger(__name__)
EVENT_FORMATS = ("json", "none")


class _EventHandler(logging.StreamHandler):
    """The stage events as they are: one JSON object per line, never wrapped. Set up for ``sys.stderr``, it writes
    to whatever ``sys.stderr`` is at the time (a test's capture, a redirect), never to a stream closed since."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self.follow = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        if self.follow:
            self.stream = sys.stderr
        super().emit(record)


def setup_events(fmt: str = "json", stream=None) -> None:
    """Where each stage's event (``ledger.events``: run id, stage, status, counts, seconds) goes: ``json``,
    one JSON object per line on ``stream`` (default: stderr), or ``none``. Replaces an earlier setup."""
    import sys

    if fmt not in EVENT_FORMATS:
        raise ConfigError(f"unknown event format {fmt!r}", fix=f"use one of {', '.join(EVENT_FORMATS)}")
    events = ledger.events
    for old in [h for h in events.handlers if isinstance(h, _EventHandler)]:
        events.removeHandler(old)
    events.propagate = False
    events.setLevel(logging.INFO)
    if fmt == "json":
        events.addHandler(_EventHandler(None if stream is None or stream is sys.stderr else stream))
    events.fulcrum_format = fmt  # set up: iter_pipeline keeps it



# Each stage job: (spark, config, run_id) -> StageReport. Later stages plug in here, in order.
STAGES: dict[str, Callable[[SparkSession, PipelineConfig, str], StageReport]] = {
    "ingest": ingest.run,
    "validate": validate.run,
    "curate": curate.run,
    "audit": audit.run,
    "oversample": oversample.run,
    "train": launch.run,
}


def select_stages(start: str | None = None, until: str | None = None) -> list[str]:
    """The stages from ``start`` through ``until`` (both included), in data-flow order."""
    names = list(STAGES)
    for given, flag in ((start, "--from"), (until, "--until")):
        if given is not None and given not in STAGES:
            raise ConfigError(f"{flag} {given!r} is not a stage", fix=f"stages, in order: {', '.join(names)}")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}", fix=f"stages, in order: {', '.join(names)}")
    return names[first : last + 1]


def iter_pipeline(
    spark: SparkSession, cfg: PipelineConfig, run_id: str, stages: list[str] | None = None
) -> Iterator[StageReport]:
    """Run the named stages (default: all) in order, yielding each report; stop at the first error.

    Every stage is idempotent (bronze inserts only new sample ids, quarantine rows are replaced per
    stage, silver and gold are overwritten, each write one Delta commit), so re-running after a crash
    at any point, whole or ``--from`` the failed stage, finishes the work without duplicating rows.
    """
    if not hasattr(ledger.events, "fulcrum_format"):  # called from Python: the events go to stderr as JSON
        setup_events()
    names = [n for n in stages or list(STAGES) if (n != "validate" or cfg.suite) and (n != "audit" or cfg.audit.enabled)]
    if "validate" in (stages or STAGES) and not cfg.suite:
        log.warning("%s: no suite configured; validation skipped", cfg.dataset)
    if "audit" in (stages or STAGES) and not cfg.audit.enabled:
        log.warning("%s: audit.enabled is false; the label audit is skipped", cfg.dataset)
    engine_log = run_log(cfg.reports_dir, run_id)
    log.info("%s: run %s; the engines' output goes to %s", cfg.dataset, run_id, engine_log)
    try:
        for i, name in enumerate(names, 1):
            log.info("[%d/%d] %s %s (run %s)", i, len(names), cfg.dataset, name, run_id)
            with PROGRESS.stage(cfg.dataset, name):
                report = STAGES[name](spark, cfg, run_id)
            yield report
    finally:  # the run's metrics, in one commit, also when a stage failed
        flush_metrics(spark, cfg, run_id)


def flush_metrics(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> None:
    """Write the run's metrics (``jobs.lakehouse.metrics``); a failure is logged, never raised over the run's own."""
    try:
        RECORDER.flush(spark, tables.Lake(cfg.lake_dir), run_id)
    except Exception as exc:
        log.warning("%s: could not write the run's metrics: %s", cfg.dataset, exc)


def run_pipeline(
    spark: SparkSession, cfg: PipelineConfig, run_id: str | None = None, stages: list[str] | None = None
) -> list[StageReport]:
    return list(iter_pipeline(spark, cfg, run_id or new_run_id(), stages))


def demo(outdir: str | Path, seed: int = 7, spark_master: str | None = None,
         overrides: dict | None = None) -> list[tuple[str, list[StageReport], Path]]:  # fmt: skip
    """Build both samples under outdir and run every stage on each (``overrides``: dotted config keys
    applied to both samples' configs); returns each dataset's reports and its HTML run report."""
    from jobs.lakehouse.session import build_spark
    from jobs.report import write_report

    configs = [load_config(p, overrides) for p in samples.make_samples(outdir, seed)]
    spark = build_spark(configs[0].spark, master=spark_master)
    results = []
    for cfg in configs:
        run_id = new_run_id()
        reports = run_pipeline(spark, cfg, run_id)
        results.append((cfg.dataset, reports, write_report(spark, cfg, run_id)))
    return results
