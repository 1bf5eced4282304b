"""Fault tolerance of the lake: a Spark driver killed mid-write leaves no partial version and the
re-run writes exactly the expected rows; writers racing on one table never leave a mixed table."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from jobs.errors import ConcurrentWriteError
from jobs.lakehouse import tables

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[2]

# A Spark driver of its own (local[2]) overwriting the table with `rows` rows; each of its 8 partitions
# sleeps first, so data files land one task at a time long before the commit.
WRITER = textwrap.dedent("""
    import sys, time
    from pyspark.sql import functions as F
    from jobs.lakehouse import tables
    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    path, rows, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    spark = build_spark(SparkConfig(master="local[2]", shuffle_partitions=2))

    def slow(batches):
        time.sleep(pause)
        yield from batches

    df = spark.range(rows, numPartitions=8).withColumn("writer", F.lit("second"))
    df = df.mapInArrow(slow, df.schema)
    tables.overwrite(df, path, "run-2", "fault-test")
    print("committed", flush=True)
""")


def _data_files(path: Path) -> set[str]:
    return {p.name for p in path.glob("*.parquet")}


def test_killed_driver_mid_write_leaves_no_partial_version_and_the_rerun_is_exact(spark, tmp_path):
    path = tmp_path / "silver"
    tables.overwrite(spark.range(100).withColumn("writer", F.lit("first")), str(path), "run-1", "fault-test")
    before = _data_files(path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path), "5000", "2"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (_data_files(path) - before):  # the new version's first data file is written...
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer wrote no data file"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # ...and the driver dies before its commit
        proc.wait()
    assert b"committed" not in proc.stdout.read()
    assert _data_files(path) - before  # orphan files are there, but no version references them

    assert tables.version(spark, str(path)) == 0
    table = tables.read(spark, str(path))
    assert table.count() == 100 and {r[0] for r in table.select("writer").distinct().collect()} == {"first"}

    # The re-run (the same write, to the end) commits exactly its rows, once.
    tables.overwrite(spark.range(5000).withColumn("writer", F.lit("second")), str(path), "run-2b", "fault-test")
    table = tables.read(spark, str(path))
    assert tables.version(spark, str(path)) == 1
    assert table.count() == 5000 and table.select("id").distinct().count() == 5000
    assert {r[0] for r in table.select("writer").distinct().collect()} == {"second"}


def _race(*writers) -> list[BaseException | None]:
    """Run the writers in threads released together; each one's exception (or None)."""
    barrier = threading.Barrier(len(writers))
    outcome: list[BaseException | None] = [None] * len(writers)

    def go(i, write):
        barrier.wait()
        try:
            write()
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted on
            outcome[i] = exc

    threads = [threading.Thread(target=go, args=(i, w)) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def test_racing_overwrites_leave_one_writers_complete_table(spark, tmp_path):
    path = str(tmp_path / "gold")
    tables.overwrite(spark.range(10).withColumn("writer", F.lit("seed")), path, "r0", "race")
    frames = {name: spark.range(n).withColumn("writer", F.lit(name)) for name, n in (("a", 3000), ("b", 7000))}
    for _ in range(3):
        outcome = _race(*[lambda df=df, n=n: tables.overwrite(df, path, n, "race") for n, df in frames.items()])
        assert any(exc is None for exc in outcome)  # one wins (here the other one, typically, gets the error)
        for exc in outcome:
            assert exc is None or isinstance(exc, ConcurrentWriteError), repr(exc)
            if exc is not None:
                assert "made no commit" in exc.message and "re-run" in exc.fix
        table = tables.read(spark, path)
        writers = {r[0] for r in table.select("writer").distinct().collect()}
        assert len(writers) == 1, writers  # never a mixed table
        assert tables.last_commit(spark, path)["user_metadata"]["run_id"] == next(iter(writers))  # its own stamp
        assert table.count() == {"a": 3000, "b": 7000}[writers.pop()]


def test_racing_ingests_insert_each_row_once(spark, tmp_path):
    path = str(tmp_path / "bronze")
    tables.insert_new(spark.range(100).withColumn("sample_id", F.col("id").cast("string")).withColumn("writer", F.lit("r0")),
                  path, "sample_id", "r0", "ingest")  # fmt: skip
    new = spark.range(50, 400).withColumn("sample_id", F.col("id").cast("string"))
    outcome = _race(*[lambda run=run: tables.insert_new(new.withColumn("writer", F.lit(run)), path, "sample_id", run,
                                                    "ingest") for run in ("r1", "r2")])  # fmt: skip
    for exc in outcome:
        assert exc is None or isinstance(exc, ConcurrentWriteError), repr(exc)
    table = tables.read(spark, path)
    assert table.count() == table.select("sample_id").distinct().count() == 400
    # Each commit carries the run id of the writer whose rows it added (the stamp is per write, not per session).
    history = DeltaTable.forPath(spark, path).history().select("version", "userMetadata").collect()
    for commit in history:
        if commit["version"] == 0:
            continue
        added = tables.read(spark, path, commit["version"]).exceptAll(tables.read(spark, path, commit["version"] - 1))
        writers = {r[0] for r in added.select("writer").distinct().collect()}
        assert writers == {json.loads(commit["userMetadata"])["run_id"]}, (commit, writers)
