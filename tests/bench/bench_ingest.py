"""Ingest throughput: `fulcrum ingest` (ids + idempotent insert into bronze) against, in the
same run, a plain Spark Parquet → Delta copy (no ids, no dedup of re-runs) and a raw
pyarrow scan of the same files.

    python tests/bench/bench_ingest.py [--rows 2000000] [--features 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report, timed  # noqa: E402


def make_source(folder: Path, rows: int, features: int, files: int = 8) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    per = rows // files
    for i in range(files):
        cols = {f"f{j}": rng.standard_normal(per).astype("float32") for j in range(features)}
        cols["label"] = rng.integers(0, 3, per).astype("int32")
        pq.write_table(pa.table(cols), folder / f"part-{i}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()

    from jobs import ingest
    from jobs.config import load_config
    from jobs.lakehouse.session import build_spark

    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-"))
    make_source(tmp / "src", args.rows, args.features)
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "dataset": "bench", "kind": "tabular", "lake_root": "lake",
        "source": {"path": "src", "format": "parquet"},
        "columns": {"label": "label", "features": [f"f{j}" for j in range(args.features)]},
        "spark": {"master": "local[*]", "shuffle_partitions": 8, "driver_memory": "6g"},
    }))  # fmt: skip
    cfg = load_config(cfg_path)
    spark = build_spark(cfg.spark)
    t: dict[str, float] = {}
    with timed(t, "pyarrow"):
        scanned = pads.dataset(str(tmp / "src")).to_table().num_rows
    with timed(t, "spark_copy"):
        spark.read.parquet(str(tmp / "src")).write.format("delta").save(str(tmp / "copy"))
    with timed(t, "ingest"):
        first = ingest.run(spark, cfg, "bench-1")
    with timed(t, "reingest"):
        again = ingest.run(spark, cfg, "bench-2")
    assert scanned == first.rows_out == args.rows and again.rows_out == 0
    n = args.rows
    rows = [
        ["raw pyarrow scan (peer, read only)", n, t["pyarrow"], n / t["pyarrow"], "-"],
        ["Spark Parquet→Delta copy (peer)", n, t["spark_copy"], n / t["spark_copy"], 1.0],
        ["fulcrum ingest (ids + insert)", n, t["ingest"], n / t["ingest"], t["ingest"] / t["spark_copy"]],
        ["fulcrum re-ingest (0 new rows)", n, t["reingest"], n / t["reingest"], t["reingest"] / t["spark_copy"]],
    ]
    report("ingest", f"ingest: {n:,} rows x {args.features} float32 features, 8 Parquet files",
           ["path", "rows", "seconds", "rows/s", "x spark copy"], rows, {"seconds": t})  # fmt: skip


if __name__ == "__main__":
    main()
