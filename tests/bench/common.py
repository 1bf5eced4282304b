"""Shared helpers for the benchmarks: timing, peak memory, a table and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(os.environ.get("FULCRUM_BENCH_DIR", "bench-results"))


@contextmanager
def timed(into: dict, key: str):
    start = time.perf_counter()
    yield
    into[key] = round(time.perf_counter() - start, 3)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def report(name: str, title: str, columns: list[str], rows: list[list], extra: dict | None = None) -> Path:
    """Print a table and write it, with the machine, as JSON under bench-results/."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row])
    console = Console(width=None if sys.stdout.isatty() else 200)  # logs and CI: do not fold the table
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"name": name, "machine": machine(), "columns": columns, "rows": rows,
                               **(extra or {})}, indent=2, default=str))  # fmt: skip
    Console().print(f"wrote {out}")
    return out


@contextmanager
def spark_jobs(spark, group: str, into: dict):
    """Count the Spark jobs, and the tasks per stage, that the block runs (tagged with a job group)."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        yield
    finally:
        tracker = sc.statusTracker()
        jobs = sorted(tracker.getJobIdsForGroup(group))
        stages = []
        for job in jobs:
            info = tracker.getJobInfo(job)
            for sid in info.stageIds if info else []:
                stage = tracker.getStageInfo(sid)
                if stage:
                    stages.append((sid, stage.name, stage.numTasks, stage.numCompletedTasks))
        into[group] = {"jobs": len(jobs), "stages": sorted(set(stages))}
        sc.setJobGroup("", "")
