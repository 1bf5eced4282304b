"""Validation: fulcrum's fused validation (results, then the failing rows tagged and committed) against
the path a user takes without fulcrum (GX's own Spark engine, then a separate filter-and-write of the
failing rows to a Delta table) and against GX's validation alone, on the same cached DataFrame, same
suite, same run. Checks the results are identical (success and every result field per expectation)
and prints seconds, Spark jobs and scans per path. Then image probe throughput on the digits sample
scaled up.

    python tests/bench/bench_validate.py [--rows 5000000] [--images 4000 (0: no probe)] [--repeats 2]
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
    from jobs.validation import fused, validate
    from jobs.validation.suites import load_suite

    suite_path = tmp / "bench.json"
    suite_path.write_text(json.dumps({"name": "bench", "expectations": [
        {"type": t, "kwargs": kw, "meta": {"name": n, "policy": p}} for t, kw, n, p in SUITE]}))  # fmt: skip
    lake = tables.Lake(str(tmp / "lake"))

    def gx_own(frame):
        return validate.run_gx(frame, load_suite(suite_path)[0], "bench")

    def gx_then_write(frame):  # without fulcrum: GX's verdict, then the failing rows (with reasons) to Delta
        result = gx_own(frame)
        drops = [r for r in load_suite(suite_path)[1] if r.policy == "drop"]
        failing = {r["expectation_config"]["meta"]["name"]: r["result"].get("unexpected_count", 0)
                   for r in result.to_json_dict()["results"]}  # fmt: skip
        target = tmp / "peer-quarantine"
        if any(failing[r.name] for r in drops) or not (target / "_delta_log").is_dir() or peer_held[0]:
            fused.tag(frame, drops).write.format("delta").mode("overwrite").save(str(target))
            peer_held[0] = any(failing[r.name] for r in drops)
        return result  # like fulcrum, it writes nothing when nothing fails now and nothing failed last time

    peer_held = [False]  # does the peer's table hold rows from its last write

    def fulcrum(frame):
        result = validate.validate(frame, *load_suite(suite_path), "bench", run_name="bench")
        validate.write_quarantine(lake, result.rejected, "bench", rows=result.report.rows_in - result.report.rows_out)
        return result

    warm = make_frame(spark, 50_000).cache()  # JIT, GX's imports, Delta's first commit: not part of the race
    gx_own(warm), gx_then_write(warm), fulcrum(warm), warm.unpersist()
    table, extra = [], {"seconds": {}, "best": {}, "speedup_vs_peer": {}, "jobs": {}, "identical_results": {},
                    "quarantined": {}, "target_vs_peer": 2.0}
    for data in ("clean", "dirty"):
        df = make_frame(spark, rows, dirty=data == "dirty").cache()
        assert df.count() == rows
        t: dict[str, float] = {}
        jobs: dict[str, dict] = {}
        paths = {"gx": gx_own, "peer": gx_then_write, "fulcrum": fulcrum}
        for rnd in range(repeats):  # alternate, keep each path's best round
            for name, path in paths.items():
                with timed(t, f"{name}_{rnd}"), spark_jobs(spark, f"{name}_{data}_{rnd}", jobs):
                    out = path(df)
                if name == "gx":
                    reference = out
                elif name == "fulcrum":
                    result = out
        best = {name: min(t[f"{name}_{r}"] for r in range(repeats)) for name in paths}
        stats = {name: jobs[f"{name}_{data}_{repeats - 1}"] for name in paths}
        identical = _same_results(result.report.details["gx_result"], reference.to_json_dict())
        quarantined = tables.read(spark, lake.path("quarantine")).count()
        peer_rows = tables.read(spark, str(tmp / "peer-quarantine")).count()
        assert quarantined == peer_rows, (quarantined, peer_rows)
        failed = f"{result.report.details['failed_expectations']}/{len(SUITE)}"
        df.unpersist()
        n_fused = len(result.report.details["fused"])
        table += [
            [data, failed, "GX's own Spark engine (results only)", best["gx"], stats["gx"]["jobs"],
             scans(stats["gx"]), "-", f"{best['gx'] / best['fulcrum']:.2f}x"],
            [data, failed, "GX, then filter + Delta write of failing rows (peer)", best["peer"],
             stats["peer"]["jobs"], scans(stats["peer"]), f"{peer_rows:,}", f"{best['peer'] / best['fulcrum']:.2f}x"],
            [data, failed, f"fulcrum ({n_fused} fused, {len(SUITE) - n_fused} on GX) + quarantine commit",
             best["fulcrum"], stats["fulcrum"]["jobs"], scans(stats["fulcrum"]), f"{quarantined:,}", "1.00x"],
        ]  # fmt: skip
        extra["seconds"][data] = t
        extra["best"][data] = best
        extra["speedup_vs_peer"][data] = best["peer"] / best["fulcrum"]
        extra["jobs"][data] = stats
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
                "fulcrum's speed-up"], rows, extra)  # fmt: skip
        if args.images:  # --images 0: validation only
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
