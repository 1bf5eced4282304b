"""The metric history: a ``metrics`` Delta table per dataset, one row per (run, stage, metric), and the
anomaly checks over it (``validate.anomalies``), in the spirit of Deequ's metrics repository and its
anomaly detection strategies.

Each stage computes its metrics in the passes it already makes (ingest's row counts, the fused
validation ``agg``, curate's reports and its class count, the audit's verdicts), checks them against the
earlier runs *before it writes anything*, and hands them to ``Recorder``; the run's metrics are written in
one commit when the run ends (``flush``: replace-where on the run id, so a re-run never duplicates a row).
A check with policy ``fail`` stops the stage like a ``fail`` expectation: nothing downstream is written.

A check names metrics by glob and fires when either test says so:

- ``change``: |value / previous run's value - 1| exceeds it (the previous run: the newest earlier one);
- ``z``: the robust z-score, (value - median) / (1.4826 MAD) over the last ``window`` earlier runs, exceeds
  it in absolute value (a history with no spread: any change beyond ``min_delta``);

and never when |value - reference| is below ``min_delta``. Nothing fires before ``min_runs`` earlier runs
hold the metric. A class present earlier and missing now counts as 0 (``class_count.*``, ``class_share.*`` and
their ``batch.*``), when the stage measured that family in both runs.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from statistics import NormalDist

import numpy as np

from jobs.config import AnomaliesConfig, AnomalyCheck
from jobs.errors import DataFailedError
from jobs.lakehouse import tables

log = logging.getLogger(__name__)
TABLE = "metrics"
SCHEMA = ("dataset string, run_id string, stage string, metric string, value double, recorded_at timestamp, "
          "anomaly string")  # fmt: skip
ABSENT_IS_ZERO = ("class_count.", "class_share.", "batch.class_count.", "batch.class_share.")
MAD_SCALE = 1 / NormalDist().inv_cdf(0.75)  # 1.4826: MAD x this = the standard deviation, on normal data


@dataclass
class Anomaly:
    metric: str
    value: float
    policy: str
    rule: str  # the check that fired, in words
    previous: float | None = None
    median: float | None = None
    z: float | None = None
    change: float | None = None

    def describe(self) -> str:
        parts = [f"{self.metric} = {self.value:.6g}"]
        if self.previous is not None:
            parts.append(f"previous run {self.previous:.6g}")
        if self.median is not None:
            parts.append(f"median of the window {self.median:.6g}")
        return f"{', '.join(parts)}: {self.rule} ({self.policy})"


def robust_z(value: float, history: list[float]) -> tuple[float, float]:
    """(z, median): (value - median) / (1.4826 MAD); infinite for any difference when the history has no spread."""
    h = np.asarray(history, dtype=float)
    median = float(np.median(h))
    mad = float(np.median(np.abs(h - median))) * MAD_SCALE
    if mad == 0:
        return (0.0 if value == median else float("inf") * np.sign(value - median)), median
    return (value - median) / mad, median


def judge(name: str, value: float, history: list[float], check: AnomalyCheck) -> Anomaly | None:
    """One metric's value against its history (oldest first) under one check; None when nothing fires."""
    reasons = []
    previous = history[-1] if history else None
    change = None
    if check.change is not None and previous is not None and abs(value - previous) >= check.min_delta:
        change = (value / previous - 1) if previous else (float("inf") if value else 0.0)
        if abs(change) > check.change:
            reasons.append(f"changed {change:+.0%} from the previous run (limit ±{check.change:.0%})")
    z = median = None
    if check.z is not None and history:
        z, median = robust_z(value, history)
        if abs(z) > check.z and abs(value - median) >= check.min_delta:
            reasons.append(f"robust z-score {z:+.1f} over the last {len(history)} run(s) (limit {check.z:g})")
    if not reasons:
        return None
    return Anomaly(metric=name, value=value, policy=check.policy, rule="; ".join(reasons), previous=previous,
                   median=median, z=None if z is None or not np.isfinite(z) else float(z), change=change)  # fmt: skip


def detect(current: dict[str, float], history: list[dict[str, float]], cfg: AnomaliesConfig) -> list[Anomaly]:
    """Every anomaly of ``current`` against ``history`` (earlier runs' metrics, oldest first), the strongest
    policy first; each metric is judged by the first check whose glob names it."""
    earlier = history[-cfg.window :]
    names = set(current) | {m for run in earlier for m in run if m.startswith(ABSENT_IS_ZERO)}
    found = []
    for name in sorted(names):
        check = next((c for c in cfg.checks if fnmatch.fnmatchcase(name, c.metric)), None)
        if check is None:
            continue
        family = next((f for f in ABSENT_IS_ZERO if name.startswith(f)), None)
        value = current.get(name, 0.0 if family and any(m.startswith(family) for m in current) else None)
        # A run that measured the family (it ran that stage) but lacks this member had none of it: 0.
        past = [run.get(name, 0.0) for run in earlier
                if name in run or (family and any(m.startswith(family) for m in run))]  # fmt: skip
        if value is None or len(past) < cfg.min_runs:
            continue
        anomaly = judge(name, float(value), [float(v) for v in past], check)
        if anomaly is not None:
            found.append(anomaly)
    return sorted(found, key=lambda a: a.policy != "fail")


class Recorder:
    """The metrics of the runs in progress in this process, by (lake, run id): written by ``flush``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (lake root, run id) -> {(stage, metric): [dataset, value, anomaly or None, judged]}
        self._runs: dict[tuple[str, str], dict[tuple[str, str], list]] = {}
        self._history: dict[tuple[str, str], list[dict[str, float]]] = {}

    def history(self, spark, lake: tables.Lake, run_id: str) -> list[dict[str, float]]:
        """The earlier runs' metrics (oldest first), read once per run; runs stopped by a ``fail`` check are left
        out of the baseline."""
        key = (lake.root, run_id)
        with self._lock:
            if key in self._history:
                return self._history[key]
        path = lake.path(TABLE)
        runs: dict[str, dict[str, float]] = {}
        rows = _read_from_driver(path, run_id)
        if rows is None and tables.exists(spark, path):
            rows = (tables.read(spark, path).where(f"run_id != '{_quoted(run_id)}'")
                    .select("run_id", "metric", "value", "recorded_at", "anomaly").orderBy("recorded_at").collect())  # fmt: skip
        if rows:
            failed = {r["run_id"] for r in rows if (r["anomaly"] or "").startswith("fail")}
            for r in rows:
                if r["run_id"] not in failed and r["value"] is not None:
                    runs.setdefault(r["run_id"], {})[r["metric"]] = float(r["value"])
        with self._lock:
            self._history[key] = list(runs.values())
            return self._history[key]

    def keep(self, cfg, run_id: str, stage: str, values: dict[str, float]) -> None:
        """A stage's metrics, to be judged by the next stage that checks (ingest's: by validate, before any
        downstream write) and written by ``flush``."""
        if not cfg.validate_.anomalies.enabled:
            return
        with self._lock:
            run = self._runs.setdefault((tables.Lake(cfg.lake_dir).root, run_id), {})
            for key in [k for k in run if k[0] == stage]:
                del run[key]
            for name, value in _finite(values).items():
                run[(stage, name)] = [cfg.dataset, value, None, False]

    def check(self, spark, cfg, run_id: str, stage: str, values: dict[str, float]) -> list[Anomaly]:
        """Judge a stage's metrics (and those kept unjudged earlier in the run) against the history, keep them for
        ``flush``, warn; raise ``DataFailedError`` for a ``fail`` anomaly (the caller has written nothing yet).
        Returns the anomalies."""
        settings = cfg.validate_.anomalies
        if not settings.enabled:
            return []
        self.keep(cfg, run_id, stage, values)
        lake = tables.Lake(cfg.lake_dir)
        key = (lake.root, run_id)
        with self._lock:
            run = self._runs[key]
            pending = {k: v for k, v in run.items() if k[0] == stage or not v[3]}
        current = {metric: v[1] for (_, metric), v in pending.items()}
        anomalies = detect(current, self.history(spark, lake, run_id), settings) if settings.checks else []
        flagged = {a.metric: a for a in anomalies}
        with self._lock:
            for (_, metric), v in pending.items():
                v[3] = True
                if metric in flagged:
                    v[2] = f"{flagged[metric].policy}: {flagged[metric].rule}"
            for a in anomalies:  # a class gone: its metric is recorded as 0 with the anomaly
                if (stage, a.metric) not in run and not any(m == a.metric for _, m in run):
                    run[(stage, a.metric)] = [cfg.dataset, a.value, f"{a.policy}: {a.rule}", True]
        for a in anomalies:
            log.warning("%s %s: anomaly: %s", cfg.dataset, stage, a.describe())
        failing = [a for a in anomalies if a.policy == "fail"]
        if failing:
            self.flush(spark, lake, run_id)  # the failed run's metrics are facts too (left out of later baselines)
            raise DataFailedError(f"{cfg.dataset}: {stage} stopped by anomaly check(s) with policy fail: "
                                  + "; ".join(a.describe() for a in failing),
                                  fix=f"`fulcrum metrics CONFIG --metric {failing[0].metric}` shows the history; if the "
                                  "change is expected, re-run with that check's policy set to warn "
                                  "(validate.anomalies.checks)")  # fmt: skip
        return anomalies

    def flush(self, spark, lake: tables.Lake, run_id: str) -> int | None:
        """Write the run's metrics in one commit (replacing that run's earlier rows of the same stages); returns
        the table's version, or None when there was nothing to write."""
        with self._lock:
            run = self._runs.pop((lake.root, run_id), {})
            self._history.pop((lake.root, run_id), None)
        if not run:
            return None
        now = datetime.now(UTC)
        rows = [(v[0], run_id, stage, metric, v[1], now, v[2]) for (stage, metric), v in sorted(run.items())]
        stages = ", ".join(f"'{s}'" for s in sorted({r[2] for r in rows}))
        condition = f"run_id = '{_quoted(run_id)}' AND stage IN ({stages})"
        names = [c.split()[0] for c in SCHEMA.split(", ")]
        written = tables.write_rows(lake.path(TABLE), [dict(zip(names, r, strict=True)) for r in rows], run_id, TABLE,
                                     predicate=condition)  # fmt: skip
        if written is not None:  # one delta-rs commit from the driver; Spark creates the table
            return written
        return tables.replace_where(spark.createDataFrame(rows, SCHEMA), lake.path(TABLE), condition, run_id, TABLE)


def _read_from_driver(path: str, run_id: str) -> list[dict] | None:
    """The other runs' rows of the metrics table, oldest first, read by delta-rs (no Spark job); None when it cannot
    (no table yet, or one it cannot read): Spark reads it."""
    try:
        from deltalake import DeltaTable as LogReader

        table = LogReader(path).to_pyarrow_table(columns=["run_id", "metric", "value", "recorded_at", "anomaly"],
                                                 filters=[("run_id", "!=", run_id)])  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        log.debug("delta-rs cannot read %s (%s): Spark reads it", path, exc)
        return None
    return sorted(table.to_pylist(), key=lambda r: r["recorded_at"])


def _finite(values: dict[str, float]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            out[k] = f
    return out


def _quoted(value: str) -> str:
    return value.replace("'", "''")


RECORDER = Recorder()


def as_rows(anomalies: list[Anomaly]) -> list[dict]:
    return [asdict(a) for a in anomalies]


def load(spark, lake: tables.Lake, patterns: list[str] | None = None) -> list[dict]:
    """The metrics table's rows (oldest run first) whose metric matches one of the globs (default: all), read by
    delta-rs from the driver; ``spark`` (a session, or a function that starts one) reads it where delta-rs cannot,
    so ``fulcrum metrics`` and ``fulcrum report`` start no JVM otherwise."""
    path = lake.path(TABLE)
    try:
        from deltalake import DeltaTable as LogReader
        from deltalake.exceptions import TableNotFoundError

        try:
            rows = LogReader(path).to_pyarrow_table().to_pylist()
        except TableNotFoundError:
            rows = []
        rows.sort(key=lambda r: (r["recorded_at"], r["stage"], r["metric"]))
    except Exception as exc:  # noqa: BLE001 - a table delta-rs cannot read
        log.debug("delta-rs cannot read %s (%s): Spark reads it", path, exc)
        spark = spark() if callable(spark) else spark
        if not tables.exists(spark, path):
            return []
        rows = [r.asDict() for r in tables.read(spark, path).orderBy("recorded_at", "stage", "metric").collect()]
    if patterns:
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r["metric"], p) for p in patterns)]
    return rows


def by_run(rows: list[dict]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """(run ids, oldest first; {metric: {run id: row}}) from ``load``'s rows."""
    runs: list[str] = []
    table: dict[str, dict[str, dict]] = {}
    for r in sorted(rows, key=lambda r: r["recorded_at"]):
        if r["run_id"] not in runs:
            runs.append(r["run_id"])
        table.setdefault(r["metric"], {})[r["run_id"]] = r
    return runs, table
