"""The run ledger: one row per stage attempt in the dataset's ``runs`` Delta table."""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from jobs.errors import FulcrumError
from jobs.lakehouse import tables

log = logging.getLogger(__name__)
# One JSON line per stage attempt (counts, seconds, outputs): for log shippers and schedulers.
events = logging.getLogger("fulcrum.events")

TABLE_REF = T.StructType(
    [
        T.StructField("name", T.StringType()),
        T.StructField("path", T.StringType()),
        T.StructField("version", T.LongType()),
    ]
)
RUNS_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("dataset", T.StringType(), False),
        T.StructField("stage", T.StringType(), False),
        T.StructField("status", T.StringType(), False),
        T.StructField("started_at", T.TimestampType(), False),
        T.StructField("finished_at", T.TimestampType(), False),
        T.StructField("seconds", T.DoubleType(), False),
        T.StructField("inputs", T.ArrayType(TABLE_REF)),
        T.StructField("outputs", T.ArrayType(TABLE_REF)),
        T.StructField("counts", T.MapType(T.StringType(), T.LongType())),
        T.StructField("error", T.StringType()),
    ]
)


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 8 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class StageRun:
    run_id: str
    dataset: str
    stage: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    inputs: list[tuple[str, str, int | None]] = field(default_factory=list)
    outputs: list[tuple[str, str, int | None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    status: str = "running"
    error: str | None = None
    seconds: float = 0.0

    def record(self) -> dict:
        """The attempt's row in ``runs`` (times in UTC)."""
        ref = ("name", "path", "version")
        return {"run_id": self.run_id, "dataset": self.dataset, "stage": self.stage, "status": self.status,
                "started_at": self.started_at, "finished_at": datetime.now(UTC), "seconds": float(self.seconds),
                "inputs": [dict(zip(ref, i, strict=True)) for i in self.inputs],
                "outputs": [dict(zip(ref, o, strict=True)) for o in self.outputs],
                "counts": {k: int(v) for k, v in self.counts.items()}, "error": self.error}  # fmt: skip

    def row(self) -> tuple:
        """``record`` as a Spark row of ``RUNS_SCHEMA`` (the session's time zone is UTC: naive times)."""
        r = self.record()
        return tuple(r[f.name].replace(tzinfo=None) if f.name.endswith("_at") else r[f.name] for f in RUNS_SCHEMA.fields)

    def event(self) -> dict:
        """The structured log record of this attempt."""
        return {"event": "stage", "run_id": self.run_id, "dataset": self.dataset, "stage": self.stage,
                "status": self.status, "seconds": round(self.seconds, 2),
                "rows_in": self.counts.get("rows_in"), "rows_out": self.counts.get("rows_out"),
                "counts": {k: int(v) for k, v in self.counts.items()},
                "outputs": [{"table": n, "path": p, "version": v} for n, p, v in self.outputs],
                "error": self.error.splitlines()[0] if self.error else None}  # fmt: skip


@contextmanager
def track(spark: SparkSession, lake: tables.Lake, run_id: str, dataset: str, stage: str) -> Iterator[StageRun]:
    """Time a stage and append its outcome (succeeded or failed, with the error) to ``runs``."""
    tables.check_local_root(lake.root)  # before anything: a lake that cannot exist cannot record the attempt either
    run = StageRun(run_id=run_id, dataset=dataset, stage=stage)
    start = time.perf_counter()
    try:
        yield run
        run.status = "succeeded"
    except BaseException as exc:
        run.status = "failed"
        run.error = (
            str(exc)
            if isinstance(exc, FulcrumError)
            else "".join(traceback.format_exception_only(type(exc), exc)).strip()
        )
        raise
    finally:
        run.seconds = time.perf_counter() - start
        try:
            record(spark, lake, run)
        except Exception:  # never hide the stage's own error behind a ledger failure
            log.exception("could not record run %s/%s in the runs table", run_id, stage)
        events.info(json.dumps(run.event(), default=str))


def record(spark: SparkSession, lake: tables.Lake, run: StageRun) -> None:
    """Append the attempt: one delta-rs commit from the driver once the table exists (Spark creates it)."""
    path = lake.path("runs")
    if tables.write_rows(path, [run.record()], run.run_id, "runs") is None:
        tables.append(spark.createDataFrame([run.row()], schema=RUNS_SCHEMA), path, run.run_id, "runs")


def last_attempt(spark: SparkSession, lake: tables.Lake, stage: str) -> dict | None:
    """The newest attempt of ``stage`` in ``runs`` as a dict (None when there is none), read by delta-rs from the
    driver (tens of milliseconds; Spark's read and sort cost 0.7 s), or by Spark where delta-rs cannot read it."""
    path = lake.path("runs")
    try:
        from deltalake import DeltaTable as LogReader

        rows = LogReader(path).to_pyarrow_table(filters=[("stage", "=", stage)]).to_pylist()
        return max(rows, key=lambda r: r["started_at"], default=None)
    except Exception as exc:  # noqa: BLE001 - no table (None from Spark too), or one delta-rs cannot read
        log.debug("delta-rs cannot read %s (%s): Spark reads it", path, exc)
    df = history(spark, lake)
    row = df.where(df.stage == stage).first() if df is not None else None
    return row.asDict(recursive=True) if row is not None else None


def history(spark: SparkSession, lake: tables.Lake, run_id: str | None = None):
    """The runs table (one run's attempts when ``run_id`` is given), newest first; None when nothing ran yet."""
    path = lake.path("runs")
    if not tables.exists(spark, path):
        return None
    df = tables.read(spark, path)
    if run_id is not None:
        df = df.where(df.run_id == run_id)
    return df.orderBy("started_at", ascending=False)


def latest_run_id(spark: SparkSession, lake: tables.Lake) -> str | None:
    df = history(spark, lake)
    row = df.select("run_id").first() if df is not None else None
    return row["run_id"] if row else None
