"""Validation: fulcrum's fused pass (results + quarantine) against GX's own Spark engine on
the same cached DataFrame, same suite, same run. Checks the results are identical (success
and every result field per expectation) and prints seconds, Spark jobs and scans per path.
Then image probe throughput on the digits sample scaled up.

    python tests/bench/bench_validate.py [--rows 5000000] [--images 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report, spark_jobs, timed  # noqa: E402

PARTITIONS = 8
SUITE = [  # 11 expectations: not-null, between, in-set, regex, mean, stdev, max, unique, row count
    ("expect_table_row_count_to_be_between", {"min_value": 1, "max_value": 10**10}, "rows", "fail"),
    ("expect_column_values_to_not_be_null", {"column": "id"}, "id_present", "drop"),
    ("expect_column_values_to_not_be_null", {"column": "x"}, "x_present", "drop"),
    ("expect_column_values_to_be_between", {"column": "x", "min_value": 0, "max_value": 100}, "x_range", "drop"),
    ("expect_column_values_to_be_between", {"column": "y", "min_value": -10, "max_value": 10}, "y_range", "drop"),
    ("expect_column_values_to_be_in_set", {"column": "cat", "value_set": ["a", "b", "c"]}, "cat_known", "drop"),
    ("expect_column_values_to_match_regex", {"column": "code", "regex": r"^C-\d{4}$"}, "code_format", "warn"),
    ("expect_column_mean_to_be_between", {"column": "x", "min_value": 40, "max_value": 60}, "x_mean", "warn"),
    ("expect_column_stdev_to_be_between", {"column": "y", "min_value": 0, "max_value": 100}, "y_stdev", "warn"),
    ("expect_column_max_to_be_between", {"column": "z", "min_value": 0, "max_value": 10}, "z_max", "warn"),
    ("expect_column_values_to_be_unique", {"column": "id"}, "id_unique", "warn"),
]  # fmt: skip


def make_frame(spark, rows: int, dirty: bool = True):
    """Generated rows; ``dirty`` injects faults: null x, out-of-range y, unknown categories."""
    from pyspark.sql import functions as F

    r = F.rand(seed=1)
    p = 1.0 if dirty else 0.0
    return spark.range(rows, numPartitions=PARTITIONS).select(
        F.col("id"),
        F.when(F.rand(seed=2) < 0.001 * p, None).otherwise(r * 100).alias("x"),
        F.when(F.rand(seed=3) < 0.002 * p, F.lit(1000.0)).otherwise(F.randn(seed=4)).alias("y"),
        F.when(F.rand(seed=5) < 0.002 * p, F.lit("zz"))
         .otherwise(F.element_at(F.array(*map(F.lit, "abc")), (F.col("id") % 3 + 1).cast("int"))).alias("cat"),
        F.format_string("C-%04d", F.col("id") % 10000).alias("code"),
        (F.rand(seed=6) * 10).alias("z"),
    )  # fmt: skip


def scans(stats: dict) -> str:
    """Stages that read the cached frame: full ones (every partition), partial ones (limit queries)."""
    reads = [s for s in stats["stages"] if s[2] <= PARTITIONS and s[3] > 0 and "Exchange" not in s[1]]
    full = sum(1 for s in reads if s[3] == PARTITIONS)
    partial = sum(1 for s in reads if s[3] < PARTITIONS)
    return f"{full} full + {partial} partial"


def bench_validate(spark, rows: int, tmp: Path, repeats: int = 2) -> tuple[list[list], dict]:
    """Both paths on clean data (every expectation passes) and on dirty data (faults injected)."""
    from jobs.lakehouse import tables
    from jobs.validation import validate
    from jobs.validation.suites import load_suite

    suite_path = tmp / "bench.json"
    suite_path.write_text(json.dumps({"name": "bench", "expectations": [
        {"type": t, "kwargs": kw, "meta": {"name": n, "policy": p}} for t, kw, n, p in SUITE]}))  # fmt: skip
    lake = tables.Lake(str(tmp / "lake"))

    def gx_own(frame):
        return validate.run_gx(frame, load_suite(suite_path)[0], "bench")

    def fulcrum(frame):
        result = validate.validate(frame, *load_suite(suite_path), "bench", run_name="bench")
        validate.write_quarantine(lake, result.rejected, "bench")
        return result

    warm = make_frame(spark, 50_000).cache()  # JIT, GX's imports, Delta's first commit: not part of the race
    gx_own(warm), fulcrum(warm), warm.unpersist()
    table, extra = [], {"seconds": {}, "jobs": {}, "identical_results": {}, "quarantined": {}}
    for data in ("clean", "dirty"):
        df = make_frame(spark, rows, dirty=data == "dirty").cache()
        assert df.count() == rows
        t: dict[str, float] = {}
        jobs: dict[str, dict] = {}
        for rnd in range(repeats):  # alternate, keep each path's best round
            with timed(t, f"gx_{rnd}"), spark_jobs(spark, f"gx_{data}_{rnd}", jobs):
                reference = gx_own(df)
            with timed(t, f"fulcrum_{rnd}"), spark_jobs(spark, f"fulcrum_{data}_{rnd}", jobs):
                result = fulcrum(df)
        gx_s, ours_s = min(t[f"gx_{r}"] for r in range(repeats)), min(t[f"fulcrum_{r}"] for r in range(repeats))
        gx_jobs, our_jobs = jobs[f"gx_{data}_{repeats - 1}"], jobs[f"fulcrum_{data}_{repeats - 1}"]
        identical = _same_results(result.report.details["gx_result"], reference.to_json_dict())
        quarantined = tables.read(spark, lake.path("quarantine")).count()
        failed = result.report.details["failed_expectations"]
        df.unpersist()
        fused = len(result.report.details["fused"])
        table += [
            [data, f"{failed}/{len(SUITE)}", "GX's own Spark engine (peer)", gx_s, gx_jobs["jobs"], scans(gx_jobs),
             "-", "1.00x"],
            [data, f"{failed}/{len(SUITE)}", f"fulcrum ({fused} fused, {len(SUITE) - fused} on GX) + quarantine",
             ours_s, our_jobs["jobs"], scans(our_jobs), f"{quarantined:,}", f"{gx_s / ours_s:.2f}x"],
        ]  # fmt: skip
        extra["seconds"][data] = t
        extra["jobs"][data] = {"gx": gx_jobs, "fulcrum": our_jobs}
        extra["identical_results"][data] = identical
        extra["quarantined"][data] = quarantined
    return table, extra


def _same_results(ours: dict, theirs: dict) -> bool:
    """Success and every result field, per expectation; prints what differs."""

    def by_name(suite_json):
        return {r["expectation_config"]["meta"]["name"]: (r["success"], r["result"]) for r in suite_json["results"]}

    a, b = by_name(ours), by_name(theirs)
    for name in b:
        if a.get(name) != b[name]:
            print(f"DIFFERENT {name}:\n  gx      {b[name]}\n  fulcrum {a.get(name)}")
    return a == b


def _clean_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.format == "PNG" and img.width * img.height < 10**6
    except Exception:
        return False


def bench_probe(spark, images: int, tmp: Path) -> list[list]:
    """Probe throughput: the digits sample's decodable images copied until there are ``images`` files."""
    from pyspark.sql import functions as F

    from jobs.samples import make_digits
    from jobs.validation.probe import probe_images

    make_digits(tmp / "samples", seed=7)
    src = tmp / "samples" / "digits"
    files = [p for p in sorted((src / "images").rglob("*.png")) if not p.is_symlink() and _clean_png(p)][:500]
    root = tmp / "scaled"
    root.mkdir()
    paths = []
    for i in range(images):
        target = root / f"{i // 1000:03d}" / f"img_{i:06d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(files[i % len(files)], target)
        paths.append((str(target.relative_to(root)),))
    df = spark.createDataFrame(paths, "path string").repartition(PARTITIONS)
    t: dict[str, float] = {}
    with timed(t, "probe"):
        probed = probe_images(df, "path", str(root)).agg(F.sum(F.col("image_decodable").cast("int"))).first()[0]
    assert probed == images
    cores = os.cpu_count() or 1
    return [["image probe (open, verify, decode, sha256, pHash)", images, t["probe"], images / t["probe"],
             images / t["probe"] / cores]]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    spark = build_spark(
        SparkConfig(master="local[*]", shuffle_partitions=4, driver_memory="8g")
    )  # != PARTITIONS: scans stand out
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-"))
    try:
        rows, extra = bench_validate(spark, args.rows, tmp, args.repeats)
        same = all(extra["identical_results"].values())
        report("validate", f"validate: {args.rows:,} rows, {len(SUITE)} expectations, cached DataFrame "
               f"({PARTITIONS} partitions), best of {args.repeats}; results identical to GX's: {same}",
               ["data", "failed", "path", "seconds", "Spark jobs", "scans of the data", "quarantined",
                "speed-up"], rows, extra)  # fmt: skip
        probe_rows = bench_probe(spark, args.images, tmp)
        report("probe", f"image probe: {args.images:,} PNG files, {os.cpu_count()} cores",
               ["path", "images", "seconds", "images/s", "images/s/core"], probe_rows)  # fmt: skip
        if not same:
            sys.exit("fulcrum's results differ from GX's own (see above)")
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
