"""The run report: one self-contained HTML page per run (``<reports>/<run_id>/report.html``).

Everything comes from what the run left behind: its rows in the ``runs`` table, the stages'
JSON and PNG files under ``<reports>/<run_id>/``, and the quarantine table's rows stamped
with the run id. Plots and image thumbnails are embedded as data URIs, so the page can be
mailed or attached to a scheduler's task without the folder beside it.
"""

from __future__ import annotations

import functools
import io as bytes_io
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import plots
from jobs.balancing.auto import gain_text
from jobs.config import PipelineConfig
from jobs.errors import ConfigError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.ranks import rank_within
from training.contract import METRICS, UnsafePath, as_mode, read_json, safe_join

log = logging.getLogger(__name__)
MAX_CLUSTERS = 8
MAX_MEMBERS = 6
THUMB = 48


@functools.cache
def _pages():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("jobs", "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    env.filters["num"] = lambda v: f"{v:,}" if isinstance(v, int) else ("" if v is None else str(v))
    env.filters["gain"] = gain_text
    return env


def render(template: str, **context) -> str:
    """An HTML page from ``jobs/templates/`` (autoescaped; ``num`` formats counts with thousands separators, ``gain`` a balancing candidate's
    paired difference from ``none``)."""
    return _pages().get_template(template).render(**context)


def write_report(spark: SparkSession | Callable[[], SparkSession], cfg: PipelineConfig,
                 run_id: str | None = None) -> Path:  # fmt: skip
    """Build the HTML report of ``run_id`` (default: the newest run) and return its path. The tables are read by
    delta-rs from the driver (the runs table, and the quarantine's counts and duplicate clusters as DataFusion SQL:
    no JVM, under a second); ``spark`` (a session, or a function that starts one) reads them where delta-rs
    cannot, so ``fulcrum report`` starts Spark only then."""
    lake = tables.Lake(cfg.lake_dir)
    try:
        run_id, rows, quarantine, clusters = _from_driver(lake, cfg, run_id)
    except Exception as exc:  # noqa: BLE001 - a table delta-rs cannot read: Spark reads them all
        log.debug("the report's tables through Spark (delta-rs: %s)", exc)
        session = spark if isinstance(spark, SparkSession) else spark()
        run_id, rows, quarantine, clusters = _from_spark(session, lake, cfg, run_id)
    if not rows:
        raise ConfigError(f"{cfg.dataset}: no run {run_id or ''} in {lake.path('runs')}".replace("  ", " "),
                          fix="`fulcrum runs CONFIG` lists the run ids")  # fmt: skip
    folder = Path(cfg.reports_dir) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    context = {
        "dataset": cfg.dataset, "kind": cfg.kind, "run_id": run_id, "lake": cfg.lake_dir,
        "stages": [_attempt(r) for r in rows],
        "validation": _json(folder / "validation_summary.json"),
        "data_docs": _data_docs(cfg, folder),
        "quarantine": quarantine,
        "clusters": clusters,
        "curate": _json(folder / "curate.json"),
        "near_check": _near_check(_json(folder / "curate.json")),
        "cv": _json(folder / "train" / "cv.json"),
        "audit": _json(folder / "audit.json"),
        "balancing": _json(folder / "balance.json"),
        "metrics": METRICS,
        "history": _metric_history(spark, lake, run_id, folder),
        "tensorboard": str(folder / "train" / "tensorboard") if (folder / "train" / "tensorboard").exists() else None,
        "plots": {name: plots.data_uri(path) for name, path in (
            ("class counts per fold", folder / "folds.png"),
            ("class balance before / after oversampling, per fold", folder / "class_balance.png"),
            ("CV metrics per fold", folder / "train" / "fold_metrics.png"),
            ("learning curves", folder / "train" / "learning_curves.png"),
            ("confusion matrix (out-of-fold predictions)", folder / "train" / "confusion.png"),
            ("calibration: reliability diagram (CV out-of-fold rows and the test part)",
             folder / "train" / "reliability.png"),
            ("hyperparameter search: running mean CV metric per trial", folder / "train" / "search" / "search.png"),
            ("label audit: confident joint and noise matrix", folder / "audit.png"),
        ) if path.exists()},
    }  # fmt: skip
    path = folder / "report.html"
    path.write_text(render("report.html.j2", **context))
    log.info("report %s: %s", cfg.dataset, path)
    return path


def _metric_history(spark, lake: tables.Lake, run_id: str, folder: Path) -> dict | None:
    """This run's recorded metrics and anomalies, with a trend plot per flagged metric (``jobs.lakehouse.metrics``)."""
    from jobs.lakehouse import metrics

    rows = metrics.load(spark, lake)
    if not rows:
        return None
    runs, table = metrics.by_run(rows)
    mine = [r for r in rows if r["run_id"] == run_id]
    flagged = [r for r in mine if r["anomaly"]]
    trends = {}
    for r in flagged:
        series = table[r["metric"]]
        path = folder / "metrics" / f"{r['metric'].replace('/', '_')}.png"
        plots.metric_trend(r["metric"], runs, [series[x]["value"] if x in series else None for x in runs], run_id,
                           path, r["anomaly"])  # fmt: skip
        trends[r["metric"]] = plots.data_uri(path)
    return {"runs": len(runs), "recorded": len(mine), "anomalies": flagged, "trends": trends}


def _attempt(row) -> dict:
    counts = dict(row["counts"] or {})
    return {
        "stage": row["stage"], "status": row["status"], "started": f"{row['started_at']:%Y-%m-%d %H:%M:%S}",
        "seconds": f"{row['seconds']:.1f}", "rows_in": counts.get("rows_in"), "rows_out": counts.get("rows_out"),
        "dropped": {k.removeprefix("dropped."): v for k, v in sorted(counts.items()) if k.startswith("dropped.")},
        "outputs": [f"{o['name']}@v{o['version']}" for o in row["outputs"] or []],
        "error": (row["error"] or "").strip(),
    }  # fmt: skip


def _json(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def _near_check(curate: dict | None) -> str | None:
    """The image near-duplicate self-check as a sentence (None for tables, or before curate ran)."""
    from jobs.curation.near_images import describe

    check = ((curate or {}).get("stages", {}).get("dedup") or {}).get("near_check")
    return describe(check) if check else None


def _data_docs(cfg: PipelineConfig, folder: Path) -> str | None:
    index = Path(cfg.reports_dir) / "data_docs" / "index.html"
    return os.path.relpath(index, folder) if index.exists() else None


def _from_driver(lake: tables.Lake, cfg: PipelineConfig, run_id: str | None) -> tuple:
    """(run id, its attempts oldest first, quarantine counts, duplicate clusters) read by delta-rs."""
    import pyarrow as pa
    from deltalake import DeltaTable as LogReader
    from deltalake import QueryBuilder
    from deltalake.exceptions import TableNotFoundError

    try:
        runs = LogReader(lake.path("runs"))
    except TableNotFoundError:
        return run_id, [], [], []
    if run_id is None:
        ids = runs.to_pyarrow_table(columns=["run_id", "started_at"]).to_pylist()
        run_id = max(ids, key=lambda r: r["started_at"])["run_id"] if ids else None
    rows = runs.to_pyarrow_table(filters=[("run_id", "=", run_id)]).to_pylist() if run_id else []
    rows.sort(key=lambda r: r["started_at"])
    try:
        q = LogReader(lake.path("quarantine"))
    except TableNotFoundError:
        return run_id, rows, [], []
    sql = QueryBuilder().register("q", q)

    def query(text: str) -> list[dict]:
        return pa.RecordBatchReader.from_stream(sql.execute(text)).read_all().to_pylist()

    mine = f"run_id = {_sql_text(run_id)}"
    counts = query(f"SELECT stage, reason, count(*) AS n FROM (SELECT stage, unnest(reasons) AS reason FROM q "
                   f"WHERE {mine}) GROUP BY stage, reason ORDER BY stage, n DESC")  # fmt: skip
    quarantine = [{"stage": r["stage"], "reason": r["reason"], "rows": r["n"]} for r in counts]
    if "duplicate_of" not in q.schema().to_arrow().names:
        return run_id, rows, quarantine, []
    top = query(f"SELECT duplicate_of, count(*) AS n, first_value(reasons[1]) AS reason FROM q WHERE {mine} AND "
                f"duplicate_of IS NOT NULL GROUP BY duplicate_of ORDER BY n DESC, duplicate_of LIMIT {MAX_CLUSTERS}")  # fmt: skip
    if not top:
        return run_id, rows, quarantine, []
    path_col = cfg.images.path_column if cfg.images else None
    kept = ", ".join(_sql_text(r["duplicate_of"]) for r in top)
    extra = f", {_sql_name(path_col)}" if path_col else ""
    members = query(f"SELECT * FROM (SELECT sample_id, duplicate_of{extra}, row_number() OVER (PARTITION BY "
                    f"duplicate_of ORDER BY sample_id) AS _rank FROM q WHERE {mine} AND duplicate_of IN ({kept})) "
                    f"WHERE _rank <= {MAX_MEMBERS}")  # fmt: skip
    kept_paths = {}
    if path_col:
        sql.register("b", LogReader(lake.path("bronze")))
        found = query(f"SELECT sample_id{extra} FROM b WHERE sample_id IN ({kept})")
        kept_paths = {r["sample_id"]: r[path_col] for r in found}
    return run_id, rows, quarantine, _clusters_of(cfg, top, members, kept_paths)


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _from_spark(spark: SparkSession, lake: tables.Lake, cfg: PipelineConfig, run_id: str | None) -> tuple:
    """What ``_from_driver`` reads, read by Spark."""
    run_id = run_id or ledger.latest_run_id(spark, lake)
    attempts = ledger.history(spark, lake, run_id) if run_id else None
    rows = attempts.orderBy("started_at").collect() if attempts is not None else []
    return run_id, rows, _quarantine(spark, lake, run_id), _clusters(spark, lake, cfg, run_id)


def _quarantine(spark: SparkSession, lake: tables.Lake, run_id: str) -> list[dict]:
    """Quarantined rows of this run per stage and reason."""
    if not tables.exists(spark, lake.path("quarantine")):
        return []
    q = tables.read(spark, lake.path("quarantine")).where(F.col("run_id") == run_id)
    counts = (q.select("stage", F.explode("reasons").alias("reason")).groupBy("stage", "reason").count()
              .orderBy("stage", F.desc("count")).collect())  # fmt: skip
    return [{"stage": r["stage"], "reason": r["reason"], "rows": r["count"]} for r in counts]


def _clusters(spark: SparkSession, lake: tables.Lake, cfg: PipelineConfig, run_id: str) -> list[dict]:
    """The largest duplicate clusters this run removed: the kept row and the rows dropped as its copies."""
    if not tables.exists(spark, lake.path("quarantine")):
        return []
    q = tables.read(spark, lake.path("quarantine")).where((F.col("run_id") == run_id) & F.col("duplicate_of").isNotNull())
    top = (q.groupBy("duplicate_of").agg(F.count(F.lit(1)).alias("n"), F.first("reasons")[0].alias("reason"))
           .orderBy(F.desc("n"), "duplicate_of").limit(MAX_CLUSTERS).collect())  # fmt: skip
    if not top:
        return []
    survivors = [r["duplicate_of"] for r in top]
    path_col = cfg.images.path_column if cfg.images else None
    # At most MAX_MEMBERS rows of each cluster reach the driver, however large the cluster (ids are hex: their
    # first three digits cut a cluster into 4,096 ordered ranges, ranked on their own).
    members = q.where(F.col("duplicate_of").isin(survivors)).select("sample_id", "duplicate_of",
                                                                    *([path_col] if path_col else []))  # fmt: skip
    members = rank_within(members, ["duplicate_of"], F.conv(F.substring("sample_id", 1, 3), 16, 10).cast("long"),
                          [F.col("sample_id")], limit=F.lit(MAX_MEMBERS)).collect()  # fmt: skip
    kept_paths = {}
    if path_col:
        bronze = tables.read(spark, lake.path("bronze")).where(F.col("sample_id").isin(survivors))
        kept_paths = {r["sample_id"]: r[path_col] for r in bronze.select("sample_id", path_col).collect()}
    return _clusters_of(cfg, top, members, kept_paths)


def _clusters_of(cfg: PipelineConfig, top: list, members: list, kept_paths: dict) -> list[dict]:
    """The report's clusters from the largest ones' rows (``top``), their first members and the kept rows' paths."""
    path_col = cfg.images.path_column if cfg.images else None
    root = Path(cfg.resolve(cfg.images.root)) if cfg.images else None
    out = []
    for r in top:
        rows = sorted((m for m in members if m["duplicate_of"] == r["duplicate_of"]), key=lambda m: m["_rank"])
        out.append({
            "kept": r["duplicate_of"], "size": r["n"], "reason": r["reason"],
            "kept_thumb": _thumb(root, kept_paths.get(r["duplicate_of"])) if root else None,
            "dropped": [{"id": m["sample_id"], "thumb": _thumb(root, m[path_col]) if root else None} for m in rows],
        })  # fmt: skip
    return out


def _thumb(root: Path, rel: str | None) -> str | None:
    """A small PNG data URI of an image under the root (None when it is missing, unreadable or outside)."""
    from PIL import Image

    try:
        path = safe_join(str(root), rel)
    except UnsafePath:
        return None
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as im:
            im.thumbnail((THUMB, THUMB))
            buf = bytes_io.BytesIO()
            as_mode(im, "RGB").save(buf, format="PNG")
    except Exception:  # a corrupt file was quarantined for that reason; the page still renders
        return None
    return plots.data_uri(buf.getvalue())
