"""Ingest: read the source as it is, give each row a deterministic ``sample_id``, write bronze.

``sample_id`` is the first 128 bits of a SHA-256 over the row (its configured id column and
its content, or its content alone) and the row's occurrence number among identical rows, so
repeated rows keep distinct ids, and an id depends only on the row and its count: a source
that grows (even by rows that share an existing row's id column) keeps every old id. Rows whose id bronze already holds are not
inserted again: ingesting the same source twice adds nothing.
"""

from __future__ import annotations

import glob
import logging
import time

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import DELTA_FORBIDDEN, PipelineConfig, delta_name
from jobs.errors import SchemaMismatchError, SourceError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.metrics import RECORDER
from jobs.stage import StageReport, StageResult

log = logging.getLogger(__name__)

LINEAGE_COLUMNS = ("sample_id", "source_file", "ingest_run_id")
NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def read_source(spark: SparkSession, cfg: PipelineConfig) -> DataFrame:
    """The source rows as Spark reads them, plus ``source_file``."""
    src = cfg.source
    path = cfg.resolve(src.path)
    if "://" not in path and not glob.glob(path):
        raise SourceError(f"source not found: {path}", fix="check source.path (relative to the YAML file)")
    if src.format == "delta":
        if not tables.exists(spark, path):
            raise SourceError(f"{path} is not a Delta table", fix="set source.format to csv, parquet or json")
        return tables.read(spark, path, src.version).withColumn("source_file", F.lit(path))
    reader = spark.read.format(src.format)
    for key, value in src.options.items():
        reader = reader.option(key, str(value).lower() if isinstance(value, bool) else str(value))
    try:
        df = reader.load(path)
    except Exception as exc:
        raise SourceError(f"cannot read {path} as {src.format}: {_reason(exc)}",
                          fix="check source.format and source.options against the file") from exc  # fmt: skip
    return df.withColumn("source_file", F.col("_metadata.file_path"))


def _reason(exc: Exception) -> str:
    """The first informative line of a reader's error (Py4J's own first line names only the Java call)."""
    java = getattr(exc, "java_exception", None)
    text = str(java) if java is not None else (getattr(exc, "desc", None) or str(exc))
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("An error occurred while calling")]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _repeated_header(missing: list[str], fields: dict) -> str:
    """Spark names the copies of a repeated header ``a`` as ``a<position>``: say so."""
    import re

    hits = {c: [f for f in fields if re.fullmatch(re.escape(c) + r"\d+", f)] for c in missing}
    hits = {c: found for c, found in hits.items() if len(found) > 1}
    return "".join(f"; the header repeats {c!r} (Spark renamed the copies {', '.join(found)})"
                   for c, found in hits.items())  # fmt: skip


def check_schema(df: DataFrame, cfg: PipelineConfig) -> None:
    """Fail with the column names when the source does not match the config."""
    fields = {f.name: f.dataType for f in df.schema.fields if f.name != "source_file"}
    missing = [c for c in cfg.source_columns if c not in fields]
    if missing:
        raise SchemaMismatchError(
            f"source lacks configured columns {missing}; it has {sorted(fields)}{_repeated_header(missing, fields)}",
            fix="rename the columns in the source or correct columns.* in the config",
        )
    clash = [c for c in LINEAGE_COLUMNS if c in fields]
    if clash:
        raise SchemaMismatchError(f"source columns {clash} collide with fulcrum's lineage columns",
                                  fix="rename them in the source")  # fmt: skip
    wrong = [
        f"{f.name} ({fields[f.name].simpleString()})"
        for f in cfg.columns.features
        if f.kind == "numeric" and not isinstance(fields[f.name], (*NUMERIC_TYPES, T.StringType))
    ]
    if cfg.images and not isinstance(fields[cfg.images.path_column], T.StringType):
        wrong.append(f"{cfg.images.path_column} ({fields[cfg.images.path_column].simpleString()}, needs string)")
    if wrong:
        raise SchemaMismatchError(f"columns have types the config cannot use: {wrong}",
                                  fix="numeric features must be numbers (or strings to coerce)")  # fmt: skip


def assign_sample_ids(df: DataFrame, id_column: str | None, run_id: str) -> DataFrame:
    """Add ``sample_id`` and ``ingest_run_id``; deterministic for the same rows."""
    data_cols = sorted(c for c in df.columns if c != "source_file")
    row_hash = F.sha2(F.to_json(F.struct(*[F.col(f"`{c}`") for c in data_cols])), 256)
    key = row_hash if id_column is None else F.coalesce(
        F.concat(F.lit("id:"), F.col(f"`{id_column}`").cast("string")), F.concat(F.lit("row:"), row_hash)
    )  # fmt: skip
    # Occurrences are numbered among *identical* rows only: a grown source then keeps every old id
    # (its identical rows only gain higher numbers), whatever new rows share an old row's id column.
    window = Window.partitionBy("_key", "_row_hash").orderBy("source_file")
    ident = F.col("_key") if id_column is None else F.concat_ws("#", "_key", "_row_hash")
    return (
        df.withColumn("_row_hash", row_hash)
        .withColumn("_key", key)
        .withColumn("_occurrence", F.row_number().over(window) - 1)
        .withColumn("sample_id", F.substring(F.sha2(F.concat_ws("#", ident, "_occurrence"), 256), 1, 32))
        .withColumn("ingest_run_id", F.lit(run_id))
        .drop("_row_hash", "_key", "_occurrence")
    )


def delta_names(df: DataFrame) -> tuple[DataFrame, dict[str, str]]:
    """The source with every column name Delta cannot hold renamed (``jobs.config.delta_name``: ``mean radius``
    → ``mean_radius``), and the renames. Two source columns that would get one name stop the run."""
    renamed = {c: delta_name(c) for c in df.columns if delta_name(c) != c}
    if not renamed:
        return df, {}
    kept = [c for c in df.columns if c not in renamed]
    for new in sorted(set(renamed.values())):
        same = [old for old, n in renamed.items() if n == new] + [c for c in kept if c == new]
        if len(same) > 1:
            raise SchemaMismatchError(f"source columns {same} would all be named {new!r} in the lake (Delta forbids "
                                      f"{DELTA_FORBIDDEN!r} in names; fulcrum replaces them with _)",
                                      fix="rename one of them in the source")  # fmt: skip
    return df.withColumnsRenamed(renamed), renamed


def ingest(df: DataFrame, cfg: PipelineConfig, run_id: str) -> StageResult:
    """Rename the columns Delta cannot name, check the source against the config and add the lineage columns."""
    df, renamed = delta_names(df)
    check_schema(df, cfg)
    kept = assign_sample_ids(df, cfg.columns.id, run_id)
    report = StageReport(stage="ingest")
    if renamed:
        report.details["renamed_columns"] = len(renamed)
        log.info("ingest %s: %d column name(s) Delta cannot hold, renamed: %s", cfg.dataset, len(renamed),
                 ", ".join(f"{old!r} -> {new!r}" for old, new in list(renamed.items())[:8])
                 + (", ..." if len(renamed) > 8 else ""))  # fmt: skip
    return StageResult(kept=kept, rejected=None, report=report)


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: source → bronze (one commit), recorded in the runs table."""
    lake = tables.Lake(cfg.lake_dir)
    with ledger.track(spark, lake, run_id, cfg.dataset, "ingest") as record:
        start = time.perf_counter()
        source = read_source(spark, cfg)
        if source.isEmpty():
            raise SourceError(f"source {cfg.resolve(cfg.source.path)} has no rows",
                              fix="point source.path at a file or folder with data")  # fmt: skip
        result = ingest(source, cfg, run_id)
        written = tables.insert_new(result.kept, lake.path("bronze"), "sample_id", run_id, "ingest")
        report = result.report
        report.rows_in = written["source_rows"] if written["source_rows"] is not None else source.count()
        report.rows_out = written["inserted"]
        report.details["already_in_bronze"] = report.rows_in - report.rows_out
        report.details["bronze_version"] = written["version"]
        report.seconds = time.perf_counter() - start
        record.inputs.append(("source", cfg.resolve(cfg.source.path), cfg.source.version))
        record.outputs.append(("bronze", lake.path("bronze"), written["version"]))
        record.counts.update(report.counts())
        # Judged by validate, before anything downstream is written (bronze is the landing zone: it keeps the batch).
        RECORDER.keep(cfg, run_id, "ingest", {"rows_read": report.rows_in, "rows_new": report.rows_out})
    log.info("ingest %s: %d rows read, %d new in bronze (v%d) in %.1fs -> %s", cfg.dataset,
             report.rows_in, report.rows_out, written["version"], report.seconds, lake.path("bronze"))  # fmt: skip
    return report
