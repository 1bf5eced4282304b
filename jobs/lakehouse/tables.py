"""The lake: the only module that reads and writes Delta tables.

Every write is one Delta commit whose commit info carries the run id and the stage
(``userMetadata`` = ``{"run_id": ..., "stage": ...}``), so `DESCRIBE HISTORY`
tells which run made each version. The stamp travels with each write (the writer's
``userMetadata`` option, or a session of the MERGE's own), never through the shared
session's conf, so two writes from two threads cannot swap their run ids.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delta import exceptions as delta_errors
from delta.exceptions import ConcurrentAppendException
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from jobs.errors import ConcurrentWriteError, ConfigError

log = logging.getLogger(__name__)
# Delta's optimistic concurrency: the loser of a race to commit gets one of these, and its commit is not made.
CONFLICTS = tuple(getattr(delta_errors, name) for name in delta_errors.__all__)

TABLES = ("bronze", "quarantine", "silver", "gold", "runs", "predictions", "label_issues", "tradeoff", "audit/gold",
          "audit/predictions", "audit/verify", "balance/candidates", "metrics")
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
MERGE_RETRIES = 3
CONSTRAINT_CHECK = "spark.databricks.delta.replaceWhere.constraintCheck.enabled"


@dataclass(frozen=True)
class Lake:
    """Table locations of one dataset: ``<lake_root>/<dataset>/<table>``."""

    root: str

    def path(self, table: str) -> str:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables are {TABLES}")
        return f"{self.root.rstrip('/')}/{table}"

    def folder(self, name: str) -> str:
        """A non-table folder of the dataset (reports, Data Docs)."""
        return f"{self.root.rstrip('/')}/{name}"


def user_metadata(run_id: str, stage: str) -> str:
    """The commit's ``userMetadata``: which run and stage made it."""
    return json.dumps({"run_id": run_id, "stage": stage}, sort_keys=True)


def _stamped(session: SparkSession, run_id: str, stage: str) -> SparkSession:
    """A session of its own for one MERGE, with the run's commit metadata in its conf.

    A MERGE takes no writer options, and a conf set on the shared session would stamp any
    other thread's commit made meanwhile. ``newSession`` shares the SparkContext and caches
    but not the conf, so the stamp reaches this commit only.
    """
    own = session.newSession()
    own.conf.set(USER_METADATA, user_metadata(run_id, stage))
    return own


@contextmanager
def _conf(spark: SparkSession, key: str, value: str | None) -> Iterator[None]:
    """Set a session conf for the block (``None``: leave it alone)."""
    if value is None:
        yield
        return
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def check_local_root(root: str) -> None:
    """Fail early, naming the path, when a local lake root (or a folder above it) is a file."""
    if "://" in root and not root.startswith("file:"):
        return
    path = Path(root.removeprefix("file:"))
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"the lake folder {root} cannot be created: {folder} is a file",
                                  fix="set lake_root to a folder (or a path that does not exist yet)")  # fmt: skip
            return


@contextmanager
def conflicts(path: str) -> Iterator[None]:
    """Turn Delta's commit conflicts (another writer committed to ``path`` first) into a clear error."""
    try:
        yield
    except CONFLICTS as exc:
        raise lost_race(path, type(exc).__name__) from exc
    except AnalysisException as exc:  # two writers racing to create the same table
        if "DELTA_PATH_EXISTS" in str(exc) or "already exists" in str(exc):
            raise ConcurrentWriteError(f"another run created {path} while this one was creating it",
                                       fix="re-run: the table now exists and the stage is idempotent") from exc  # fmt: skip
        raise


def lost_race(path: str, cause: str) -> ConcurrentWriteError:
    """The error of a write whose commit lost to another writer's (``cause``: the writer's own exception)."""
    return ConcurrentWriteError(
        f"another run committed to {path} while this one was writing ({cause}); "
        "this write made no commit, the table holds the other run's complete version",
        fix="re-run when the other run has finished: every stage is idempotent; "
        "schedule one run per dataset at a time (Airflow: max_active_runs=1)",
    )


def exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def read(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """Read a Delta table, at ``version`` when given (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def last_commit(spark: SparkSession, path: str) -> dict[str, Any]:
    """Version, operation, metrics and user metadata of the newest commit."""
    row = DeltaTable.forPath(spark, path).history(1).first()
    return {
        "version": row["version"],
        "operation": row["operation"],
        "metrics": {k: int(v) for k, v in (row["operationMetrics"] or {}).items() if str(v).isdigit()},
        "user_metadata": json.loads(row["userMetadata"]) if row["userMetadata"] else {},
    }


def version(spark: SparkSession, path: str) -> int | None:
    """The table's latest version, None when ``path`` holds no Delta table.

    Read from the JVM's ``DeltaLog`` (one listing of ``_delta_log``, about 10 ms): the route
    Delta's maintainers give for it (delta-io/delta#50), though the class is internal. Where that
    call is not there (a Spark Connect session, a changed signature), the public
    ``history(1)``, a Spark job of 0.3 to 1 s, gives the same answer."""
    try:
        jvm = spark._jvm
        none = jvm.scala.Option.empty()
        latest = int(jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
                     .update(False, none, none).version())  # fmt: skip
        return latest if latest >= 0 else None
    except Exception as e:  # noqa: BLE001 - any failure of the internal route: take the public one
        log.debug("DeltaLog version of %s unavailable (%s); reading history(1)", path, e)
    return last_commit(spark, path)["version"] if exists(spark, path) else None


def properties(spark: SparkSession, path: str) -> dict[str, str]:
    return dict(DeltaTable.forPath(spark, path).detail().first()["properties"] or {})


def overwrite(df: DataFrame, path: str, run_id: str, stage: str, props: dict[str, str] | None = None) -> int:
    """Replace the table's rows (and schema) in one commit, with table properties."""
    spark = df.sparkSession
    writer = df.writeTo(f"delta.`{path}`").using("delta").option("userMetadata", user_metadata(run_id, stage))
    for key, value in {"delta.enableDeletionVectors": "false", **(props or {})}.items():
        writer = writer.tableProperty(key, str(value))
    with conflicts(path):
        writer.createOrReplace()
    return version(spark, path)


def append(df: DataFrame, path: str, run_id: str, stage: str) -> int:
    """Append rows in one commit (blind appends never conflict with each other)."""
    spark = df.sparkSession
    with conflicts(path):
        (df.write.format("delta").mode("append").option("mergeSchema", "true")
         .option("userMetadata", user_metadata(run_id, stage)).save(path))  # fmt: skip
    return version(spark, path)


def replace_where(df: DataFrame, path: str, condition: str, run_id: str, stage: str,
                  partition_by: str | None = None) -> int:  # fmt: skip
    """Atomically replace the rows matching ``condition`` with ``df`` (one commit).

    A stage's quarantine rows are replaced as a whole, so a re-run never duplicates them.
    With ``partition_by`` (set when the table is created) the condition names that
    column's value, which the caller stamps on every row of ``df``: the replacement is a
    partition overwrite that reads no existing data file, and Delta's check that each new
    row matches the condition (a second pass over ``df``) is skipped.
    """
    spark = df.sparkSession
    writer = df.write.format("delta").option("userMetadata", user_metadata(run_id, stage))
    with _conf(spark, CONSTRAINT_CHECK, "false" if partition_by else None), conflicts(path):
        if not exists(spark, path):
            (writer.partitionBy(partition_by) if partition_by else writer).save(path)
        else:
            writer.mode("overwrite").option("replaceWhere", condition).option("mergeSchema", "true").save(path)
    return version(spark, path)


def partition_rows(path: str, column: str, values: list[str]) -> int | None:
    """Rows the table's live files hold where the partition column ``column`` is one of ``values``, summed from
    the Delta log's per-file row counts as delta-rs reads them (no Spark job: tens of milliseconds). None when
    that cannot be told: no table, a table or store delta-rs cannot read, or a file without its row count."""
    try:
        import pyarrow as pa
        from deltalake import DeltaTable as LogReader

        files = pa.table(LogReader(path).get_add_actions(flatten=True))
    except Exception as e:  # noqa: BLE001 - unknown means "write as usual"
        log.debug("the Delta log of %s could not be read by delta-rs (%s)", path, e)
        return None
    key = f"partition.{column}"
    if key not in files.column_names or "num_records" not in files.column_names:
        return None
    counts = [n for v, n in zip(files[key].to_pylist(), files["num_records"].to_pylist(), strict=True) if v in values]
    return None if any(n is None for n in counts) else sum(counts)


def replace_partitions(df: DataFrame, path: str, column: str, values: list[str], run_id: str, stage: str,
                       rows: int | None = None) -> int:  # fmt: skip
    """Replace the partitions ``column`` ∈ ``values`` of a table partitioned by ``column`` with ``df``
    (``replace_where``: one commit; ``df`` carries those values). When the caller knows ``df`` holds no row
    (``rows == 0``), the Delta log says those partitions hold none either and the table has ``df``'s columns, the
    commit would change nothing: none is made and the current version is returned (a night with nothing to quarantine costs no commit)."""
    spark = df.sparkSession
    if rows == 0 and partition_rows(path, column, values) == 0 and _holds_columns(path, df.columns):
        current = version(spark, path)
        if current is not None:
            log.debug("%s: no row to write and none in %s %s: no commit (version %d)", path, column, values, current)
            return current
    quoted = [f"'{v}'" for v in values]
    condition = f"{column} = {quoted[0]}" if len(quoted) == 1 else f"{column} IN ({', '.join(quoted)})"
    if rows is not None and rows <= DRIVER_WRITE_ROWS:
        written = _replace_from_driver(df, path, condition, column, run_id, stage)
        if written is not None:
            return written
    return replace_where(df, path, condition, run_id, stage, partition_by=column)


def _holds_columns(path: str, names: list[str]) -> bool:
    """Whether the table's schema (read by delta-rs) has every column of ``names``: an empty write that would add
    columns (curate's `dup_group` to a quarantine only validate has written) is a change, and is committed."""
    try:
        from deltalake import DeltaTable as LogReader

        return set(names) <= {f.name for f in LogReader(path).schema().fields}
    except Exception:  # noqa: BLE001 - unknown: write
        return False


def nullable(schema):
    """``schema`` (Arrow) with every field nullable, nested ones too. Spark's own writes make every column nullable;
    a field Spark knows is never null (a literal, ``current_timestamp()``) would otherwise become a NOT NULL column
    in delta-rs's merged schema, and a later write without it would fail."""
    import pyarrow as pa

    def field(f: pa.Field) -> pa.Field:
        return pa.field(f.name, kind(f.type), nullable=True, metadata=f.metadata)

    def kind(t: pa.DataType) -> pa.DataType:
        if pa.types.is_struct(t):
            return pa.struct([field(t.field(i)) for i in range(t.num_fields)])
        if pa.types.is_large_list(t):
            return pa.large_list(field(t.value_field))
        if pa.types.is_list(t):
            return pa.list_(field(t.value_field))
        if pa.types.is_map(t):
            return pa.map_(kind(t.key_type), field(t.item_field))
        return t

    return pa.schema([field(f) for f in schema], metadata=schema.metadata)


DRIVER_WRITE_ROWS = 250_000  # up to this many rows, a partition replacement is written by delta-rs from the driver


def _replace_from_driver(df: DataFrame, path: str, condition: str, column: str, run_id: str, stage: str) -> int | None:
    """A small replacement (``replace_partitions``) as one delta-rs commit from the driver: the rows come back as
    Arrow (one Spark job) and delta-rs overwrites the partitions by ``condition`` (schema merged, the run's
    ``userMetadata`` stamped as Spark stamps it). Spark's own overwrite first rebuilds the table's state (three
    jobs) and commits from the JVM, which costs more than the rows' write on a small quarantine. None when delta-rs
    cannot write this table (a feature or store it does not support, a schema it will not merge): Spark writes it."""
    from deltalake import CommitProperties, write_deltalake
    from deltalake import DeltaTable as LogReader
    from deltalake.exceptions import CommitFailedError

    try:
        table = LogReader(path)
    except Exception as exc:  # noqa: BLE001 - no table yet (Spark creates it), or one delta-rs cannot open
        log.debug("delta-rs cannot open %s (%s): Spark writes it", path, exc)
        return None
    rows = df.toArrow()
    rows = rows.cast(nullable(rows.schema))  # as Spark writes: a Delta column is never NOT NULL by accident
    before = table.version()
    try:
        write_deltalake(table, rows, mode="overwrite", predicate=condition, partition_by=[column], schema_mode="merge",
                        commit_properties=CommitProperties(custom_metadata={"userMetadata": user_metadata(run_id, stage)}))  # fmt: skip
    except CommitFailedError as exc:
        raise lost_race(path, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - delta-rs could not make the commit: Spark writes it instead
        log.debug("delta-rs could not replace %s in %s (%s): Spark writes it", condition, path, exc)
        return _committed_anyway(path, before)
    return _after_commit(table)


def write_rows(path: str, rows: list[dict[str, Any]], run_id: str, stage: str,
                predicate: str | None = None) -> int | None:  # fmt: skip
    """Rows built on the driver (a ledger's attempt, a run's metrics) written to an existing table in one delta-rs
    commit, typed by the table's own schema and stamped like Spark's commits: appended, or with ``predicate`` (SQL)
    replacing the rows it matches (``replace_where``'s semantics; the rows must match it). No Spark job, where
    Spark's write of a few rows cost 0.4–1.5 s. Returns the new version; None when delta-rs cannot do it (no table
    yet, a feature or store it does not support, rows the schema refuses): the caller writes with Spark."""
    try:
        import pyarrow as pa
        from deltalake import CommitProperties, write_deltalake
        from deltalake import DeltaTable as LogReader
        from deltalake.exceptions import CommitFailedError

        table = LogReader(path)
        before = table.version()
        data = pa.Table.from_pylist(rows, schema=pa.schema(table.schema().to_arrow()))
    except Exception as exc:  # noqa: BLE001 - Spark writes instead
        log.debug("delta-rs cannot write to %s (%s): Spark writes it", path, exc)
        return None
    try:
        write_deltalake(table, data, mode="append" if predicate is None else "overwrite", predicate=predicate,
                        commit_properties=CommitProperties(custom_metadata={"userMetadata": user_metadata(run_id, stage)}))  # fmt: skip
    except CommitFailedError as exc:
        raise lost_race(path, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Spark writes instead, unless the commit was made
        log.debug("delta-rs could not write to %s (%s): Spark writes it", path, exc)
        return _committed_anyway(path, before)
    return _after_commit(table)


def _committed_anyway(path: str, before: int) -> int | None:
    """After a delta-rs error: the new version when its commit was made all the same (a hook after the commit
    failed; writing again would duplicate the rows), else None."""
    from deltalake import DeltaTable as LogReader

    try:
        now = LogReader(path).version()
    except Exception:  # noqa: BLE001
        return None
    return now if now > before else None


def _after_commit(table) -> int:
    """The version delta-rs just committed. Spark checkpoints the log every `delta.checkpointInterval` (10) commits,
    delta-rs every 100: keep Spark's pace, so a table that delta-rs writes most nights is not read back from ever
    more JSON commits."""
    version = table.version()
    if version % int(table.metadata().configuration.get("delta.checkpointInterval") or 10) == 0:
        table.create_checkpoint()
    return version


def insert_new(df: DataFrame, path: str, key: str, run_id: str, stage: str) -> dict[str, Any]:
    """Insert the rows whose ``key`` the table does not hold yet, in one commit.

    Creates the table on first use. Re-running with the same rows inserts nothing and
    makes no commit, so ingesting a source twice is idempotent. Returns the table's
    version, the rows inserted, and the source rows read (None when no commit was made,
    since Delta only records that figure in a commit's metrics).
    """
    spark = df.sparkSession
    with conflicts(path):
        if not exists(spark, path):
            df.write.format("delta").mode("errorifexists").option("userMetadata", user_metadata(run_id, stage)).save(path)
            commit = last_commit(spark, path)
            rows = commit["metrics"].get("numOutputRows", 0)
            return {"version": commit["version"], "inserted": rows, "source_rows": rows}
        before = version(spark, path)
        _merge_with_retry(df, path, key, _stamped(spark, run_id, stage))
    commit = last_commit(spark, path)
    if commit["version"] == before:  # Delta skips the commit of a merge that changes nothing
        return {"version": before, "inserted": 0, "source_rows": None}
    metrics = commit["metrics"]
    return {"version": commit["version"], "inserted": metrics.get("numTargetRowsInserted", 0),
            "source_rows": metrics.get("numSourceRows")}  # fmt: skip


def _merge_with_retry(df: DataFrame, path: str, key: str, session: SparkSession) -> None:
    for attempt in range(1, MERGE_RETRIES + 1):
        target = DeltaTable.forPath(session, path)
        try:
            (target.alias("t").merge(df.alias("s"), f"t.`{key}` = s.`{key}`").whenNotMatchedInsertAll().execute())
            return
        except ConcurrentAppendException:
            if attempt == MERGE_RETRIES:
                raise
            log.warning("concurrent write to %s; retrying merge (%d/%d)", path, attempt, MERGE_RETRIES)
            time.sleep(attempt)
