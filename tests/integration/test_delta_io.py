"""Delta round trips through the session, time travel, delta-rs interop, commit info."""

import pytest
from deltalake import DeltaTable as RsTable

from jobs.lakehouse import tables

pytestmark = pytest.mark.spark


def rows(df, *cols):
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


def test_overwrite_round_trip_with_properties_in_one_commit(spark, tmp_path):
    path = str(tmp_path / "t")
    df = spark.createDataFrame([(1, "a", 0.5), (2, "b", None)], "id int, name string, x double")
    version = tables.overwrite(df, path, "run-1", "test", {"fulcrum.kind": "tabular"})
    assert version == 0
    assert rows(tables.read(spark, path), "id", "name", "x") == [(1, "a", 0.5), (2, "b", None)]
    props = tables.properties(spark, path)
    assert props["fulcrum.kind"] == "tabular" and props["delta.enableDeletionVectors"] == "false"
    commit = tables.last_commit(spark, path)
    assert commit["user_metadata"] == {"run_id": "run-1", "stage": "test"}
    assert spark.conf.get(tables.USER_METADATA, None) is None  # not left set for other writers


def test_the_ledger_appends_through_delta_rs_once_spark_made_the_table_and_reads_the_last_attempt(spark, tmp_path):
    """The runs table: Spark creates it (the first attempt), delta-rs appends every later one from the driver (no
    Spark job), stamped with the run; Spark reads the rows back with their UTC times, `last_attempt` finds the
    newest attempt of a stage without Spark."""
    from datetime import UTC, datetime, timedelta

    from jobs.lakehouse import ledger

    lake = tables.Lake(str(tmp_path / "lake"))
    path = lake.path("runs")
    assert ledger.last_attempt(spark, lake, "validate") is None  # no table yet
    start = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    for i, (stage, status) in enumerate([("ingest", "succeeded"), ("validate", "failed"), ("validate", "succeeded")]):
        run = ledger.StageRun(run_id=f"r{i}", dataset="d", stage=stage, status=status, seconds=1.5,
                              started_at=start + timedelta(minutes=i), inputs=[("bronze", "/b", i)],
                              counts={"rows_in": 10 + i})  # fmt: skip
        ledger.record(spark, lake, run)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    assert ["Spark" in (h["engineInfo"] or "") for h in history] == [True, False, False]  # then delta-rs
    assert tables.last_commit(spark, path)["user_metadata"] == {"run_id": "r2", "stage": "runs"}
    back = ledger.history(spark, lake).collect()  # Spark reads delta-rs's rows: newest first, times in UTC
    assert [(r["run_id"], r["status"], r["counts"]["rows_in"]) for r in back] == [
        ("r2", "succeeded", 12), ("r1", "failed", 11), ("r0", "succeeded", 10)]  # fmt: skip
    assert back[0]["started_at"] == datetime(2026, 1, 1, 2, 2)  # naive UTC, as the session's time zone reads it
    last = ledger.last_attempt(spark, lake, "validate")
    assert (last["run_id"], last["status"], last["inputs"]) == ("r2", "succeeded", [{"name": "bronze", "path": "/b",
                                                                                      "version": 2}])  # fmt: skip
    assert ledger.last_attempt(spark, lake, "curate") is None


def test_time_travel_reads_an_older_version(spark, tmp_path):
    path = str(tmp_path / "t")
    tables.overwrite(spark.createDataFrame([(1,)], "id int"), path, "r1", "test")
    tables.overwrite(spark.createDataFrame([(2,), (3,)], "id int"), path, "r2", "test")
    assert rows(tables.read(spark, path, version=0), "id") == [(1,)]
    assert rows(tables.read(spark, path), "id") == [(2,), (3,)]
    assert tables.version(spark, path) == 1


def test_delta_rs_reads_what_spark_wrote(spark, tmp_path):
    path = str(tmp_path / "t")
    df = spark.createDataFrame(
        [(f"s{i}", i % 3, i * 0.25, bool(i % 2)) for i in range(50)], "sample_id string, label int, x double, f boolean"
    )
    tables.overwrite(df, path, "r1", "test", {"fulcrum.classes": '["a","b","c"]'})
    tables.append(df.limit(5), path, "r2", "test")
    table = RsTable(path)
    assert table.version() == 1
    got = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: (r["sample_id"], r["x"]))
    want = sorted((r.asDict() for r in tables.read(spark, path).collect()), key=lambda r: (r["sample_id"], r["x"]))
    assert got == want and len(got) == 55
    assert table.metadata().configuration["fulcrum.classes"] == '["a","b","c"]'
    assert len(RsTable(path, version=0).to_pyarrow_table()) == 50


def test_insert_new_is_idempotent(spark, tmp_path):
    path = str(tmp_path / "t")
    first = spark.createDataFrame([("a", 1), ("b", 2)], "k string, v int")
    assert tables.insert_new(first, path, "k", "r1", "ingest") == {"version": 0, "inserted": 2, "source_rows": 2}
    assert tables.insert_new(first, path, "k", "r2", "ingest") == {"version": 0, "inserted": 0, "source_rows": None}
    more = spark.createDataFrame([("b", 2), ("c", 3)], "k string, v int")
    assert tables.insert_new(more, path, "k", "r3", "ingest") == {"version": 1, "inserted": 1, "source_rows": 2}
    assert rows(tables.read(spark, path), "k", "v") == [("a", 1), ("b", 2), ("c", 3)]


def test_lake_paths():
    lake = tables.Lake("s3a://bucket/lake/cancer/")
    assert lake.path("bronze") == "s3a://bucket/lake/cancer/bronze"
    with pytest.raises(ValueError, match="unknown table"):
        lake.path("platinum")


def test_a_small_partition_replacement_is_one_delta_rs_commit_spark_reads_and_writes_after(spark, tmp_path, monkeypatch):
    """``replace_partitions`` with a known small row count commits through delta-rs from the driver: the same rows a
    Spark overwrite would leave, the run's stamp, new columns merged as nullable (Spark writes every column nullable,
    so a later write without them works), an empty replacement removes the partition's rows, the log checkpointed every
    10 commits as Spark does; above the bound Spark writes."""
    from pyspark.sql import functions as F

    path = str(tmp_path / "quarantine")

    def stage(df, name, run):
        return df.withColumn("stage", F.lit(name)).withColumn("run_id", F.lit(run))

    def engine() -> str:
        history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy(F.desc("version")).first()
        return "spark" if history["engineInfo"] and "Spark" in history["engineInfo"] else "delta-rs"

    first = spark.createDataFrame([(i, f"r{i}", ["a"]) for i in range(5)], "id long, name string, reasons array<string>")
    assert tables.replace_partitions(stage(first, "validate", "r1"), path, "stage", ["validate"], "r1", "validate", 5) == 0
    assert engine() == "spark"  # the table's creation is Spark's (its partitioning and properties)
    curate = spark.createDataFrame([(9, ["c"])], "id long, reasons array<string>")
    tables.replace_partitions(stage(curate, "curate", "r1"), path, "stage", ["curate"], "r1", "curate", 1)
    assert engine() == "delta-rs"
    again = spark.createDataFrame([(i, f"n{i}", ["b"]) for i in range(3)], "id long, name string, reasons array<string>")
    again = stage(again, "validate", "r2").withColumn("seen", F.current_timestamp())  # never null in Spark's eyes
    assert tables.replace_partitions(again, path, "stage", ["validate"], "r2", "validate", 3) == 2
    assert engine() == "delta-rs" and tables.last_commit(spark, path)["user_metadata"] == {"run_id": "r2", "stage": "validate"}
    table = tables.read(spark, path)
    assert rows(table, "stage", "run_id", "id") == [("curate", "r1", 9)] + [("validate", "r2", i) for i in range(3)]
    assert all(f.nullable for f in table.schema.fields) and table.schema["seen"].dataType.typeName() == "timestamp"
    assert RsTable(path).metadata().partition_columns == ["stage"]
    # Spark writes after delta-rs, without the new column (it would fail on a NOT NULL column)
    tables.replace_where(stage(curate, "curate", "r3"), path, "stage = 'curate'", "r3", "curate", partition_by="stage")
    assert rows(tables.read(spark, path).where("stage = 'curate'"), "run_id", "seen") == [("r3", None)]
    empty = stage(again.limit(0), "validate", "r4")
    assert tables.replace_partitions(empty, path, "stage", ["validate"], "r4", "validate", 0) == 4
    assert tables.partition_rows(path, "stage", ["validate"]) == 0 and engine() == "delta-rs"
    for run in range(5, 11):  # delta-rs checkpoints the log at Spark's pace (every 10 commits), not its own 100
        assert tables.replace_partitions(stage(curate, "curate", f"r{run}"), path, "stage", ["curate"], f"r{run}", "curate", 1) == run
    assert (tmp_path / "quarantine" / "_delta_log" / "00000000000000000010.checkpoint.parquet").is_file()
    assert rows(tables.read(spark, path), "stage", "run_id") == [("curate", "r10")]
    monkeypatch.setattr(tables, "DRIVER_WRITE_ROWS", 2)  # a large replacement: Spark writes it
    assert tables.replace_partitions(again, path, "stage", ["validate"], "r11", "validate", 3) == 11
    assert engine() == "spark" and tables.partition_rows(path, "stage", ["validate"]) == 3
    # Nothing to write and nothing to clear, but a column the table lacks (curate's after validate's): a commit
    wider = stage(spark.createDataFrame([], "id long, reasons array<string>, duplicate_of string"), "dedup", "r12")
    assert tables.replace_partitions(wider, path, "stage", ["dedup"], "r12", "dedup", 0) == 12
    assert "duplicate_of" in tables.read(spark, path).columns
    assert tables.replace_partitions(wider, path, "stage", ["dedup"], "r13", "dedup", 0) == 12  # then none
