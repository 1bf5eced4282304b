"""Wiring: the stages in data-flow order, run for one pipeline config."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession

from jobs import curate, ingest, oversample, samples, train, validate
from jobs.config import PipelineConfig, load_config
from jobs.runs import new_run_id
from jobs.stage import StageReport

log = logging.getLogger(__name__)

# Each stage job: (spark, config, run_id) -> StageReport. Later stages plug in here, in order.
STAGES: dict[str, Callable[[SparkSession, PipelineConfig, str], StageReport]] = {
    "ingest": ingest.run,
    "validate": validate.run,
    "curate": curate.run,
    "oversample": oversample.run,
    "train": train.run,
}


def run_pipeline(
    spark: SparkSession, cfg: PipelineConfig, run_id: str | None = None, stages: list[str] | None = None
) -> list[StageReport]:
    """Run the named stages (default: all) in order; stop at the first error."""
    run_id = run_id or new_run_id()
    reports = []
    for name in stages or list(STAGES):
        if name == "validate" and not cfg.suite:
            log.warning("%s: no suite configured; validation skipped", cfg.dataset)
            continue
        log.info("%s: %s (run %s)", cfg.dataset, name, run_id)
        reports.append(STAGES[name](spark, cfg, run_id))
    return reports


def demo(outdir: str | Path, seed: int = 7, spark_master: str | None = None,
         overrides: dict | None = None) -> list[tuple[str, list[StageReport]]]:  # fmt: skip
    """Build both samples under outdir and run every stage on each (``overrides``: dotted config keys
    applied to both samples' configs)."""
    from jobs.spark import build_spark

    configs = [load_config(p, overrides) for p in samples.make_samples(outdir, seed)]
    spark = build_spark(configs[0].spark, master=spark_master)
    return [(cfg.dataset, run_pipeline(spark, cfg)) for cfg in configs]
