"""SMOTE on Spark (fulcrum) against imbalanced-learn's SMOTE, on the same data in the same run.

(a) time and peak memory of SMOTE at 100k and 1M rows x 20 features;
(b) quality: a logistic regression trained on each oversampled set, minority-class F1
    on the same held-out rows (and on the set without oversampling, for reference);
(c) a size imbalanced-learn cannot hold in a memory budget, which fulcrum finishes:
    both run inside the same memory cgroup (a hard RSS limit; the kernel kills a process
    tree that exceeds it), imbalanced-learn also on a size that fits as a control. Spark's
    memory is set by its configuration (a 2 GiB heap here), not by the data, while
    imbalanced-learn holds the input, the neighbour model and the output in one process.
    Needs root and the cgroup-v1 memory controller; skipped otherwise.

Each contender runs in its own process, so its peak memory is its own: for fulcrum the
Python driver, the JVM (driver and executors, local[2]) and the Python workers, sampled
every 50 ms; for imbalanced-learn the process's maximum RSS. Both read the same Parquet
files of ``sklearn.datasets.make_classification`` data (10 % minority).

    python tests/bench/bench_oversample.py [--sizes 100000,1000000] [--big 6000000] [--cap-gb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402

FEATURES = [f"f{i}" for i in range(20)]
K = 5


def make_data(folder: Path, rows: int, seed: int = 0, chunk: int = 1_000_000) -> None:
    """Rows for (c) as Parquet files, generated in chunks to bound memory (each chunk its own seed:
    the figures of (c) are time and memory only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import make_classification

    folder.mkdir(parents=True, exist_ok=True)
    done = 0
    for i in range((rows + chunk - 1) // chunk):
        n = min(chunk, rows - done)
        x, y = make_classification(n_samples=n, n_features=20, n_informative=8, n_redundant=4, weights=[0.9, 0.1],
                                   class_sep=0.8, flip_y=0.02, random_state=seed + i)  # fmt: skip
        table = pa.table({**{f: x[:, j] for j, f in enumerate(FEATURES)}, "y": y.astype(np.int64),
                          "sample_id": [f"r{done + j:010d}" for j in range(n)]})  # fmt: skip
        pq.write_table(table, folder / f"part-{i:04d}.parquet")
        done += n


def _load(folder: Path):
    import pyarrow.dataset as ds

    t = ds.dataset(folder).to_table()
    return np.column_stack([t[f].to_numpy() for f in FEATURES]), t["y"].to_numpy()


CGROUPS = Path("/sys/fs/cgroup/memory")


def memory_cgroup(cap_gb: float) -> Path | None:
    """A fresh cgroup-v1 memory group limited to ``cap_gb`` (swap included where accounted), or None."""
    group = CGROUPS / f"fulcrum-bench-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(int(cap_gb * 2**30)))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(int(cap_gb * 2**30)))
    except OSError:
        return None
    return group


def run_imblearn(data: Path, out: Path, capped: bool) -> dict:
    from imblearn.over_sampling import SMOTE

    try:
        x, y = _load(data)
        start = time.perf_counter()
        xr, yr = SMOTE(k_neighbors=K, random_state=0).fit_resample(x, y)
        seconds = time.perf_counter() - start
    except MemoryError as exc:
        return {"ok": False, "error": f"MemoryError {exc}", "peak_mb": _maxrss()}
    np.save(out / "imblearn_x.npy", xr[len(x) :])
    np.save(out / "imblearn_y.npy", yr[len(x) :])
    return {"ok": True, "seconds": seconds, "peak_mb": _maxrss(), "synthetic": int(len(xr) - len(x))}


def _maxrss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fulcrum(data: Path, out: Path, capped: bool) -> dict:
    import psutil
    from pyspark.sql import functions as F

    from jobs.balancing import oversample
    from jobs.config import SparkConfig, parse_config
    from jobs.lakehouse.session import build_spark

    heap = "2g" if capped else "6g"
    spark = build_spark(SparkConfig(master="local[2]", shuffle_partitions=16, driver_memory=heap))
    peak = [0.0]
    stop = threading.Event()

    def sample():
        me = psutil.Process()
        while not stop.is_set():
            try:
                total = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
            except psutil.Error:
                continue
            peak[0] = max(peak[0], total / 2**20)
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    cfg = parse_config({"dataset": "bench", "kind": "tabular", "source": {"path": str(data), "format": "parquet"},
                        "columns": {"label": "y", "features": FEATURES},
                        "oversample": {"method": "smote", "k_neighbors": K}})  # fmt: skip
    silver = spark.read.parquet(str(data)).withColumn("y", F.col("y").cast("string")).withColumn("fold", F.lit(0))
    start = time.perf_counter()
    counts = {0: {str(r["y"]): r["count"] for r in silver.groupBy("y").count().collect()}}
    plan = oversample.plan_pools(counts, cfg, folds=1)  # pool 1: every row (the final model's)
    made = oversample.synthesize(silver, cfg, 1, plan)
    made.select(*FEATURES, "y").write.mode("overwrite").parquet(str(out / "fulcrum"))
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    spark.stop()
    return {"ok": True, "seconds": seconds, "peak_mb": peak[0], "synthetic": sum(plan[1][c]["make"] for c in plan[1]),
            "heap": heap}  # fmt: skip


def _child(who: str, data: Path, out: Path, cap_gb: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", who, "--data", str(data), "--out", str(out)]
    group = memory_cgroup(cap_gb) if cap_gb else None
    if cap_gb:
        cmd += ["--capped"]

    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=enter if group else None)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if group:
        peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
        ooms = int((group / "memory.failcnt").read_text())
    if proc.returncode or not lines:
        why = "killed by the kernel: out of memory in the cgroup" if proc.returncode in (-9, 137) else (
            (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"])[0]  # fmt: skip
        result = {"ok": False, "error": why, "returncode": proc.returncode}
    else:
        result = json.loads(lines[-1])
    if group:
        result.update({"cgroup_peak_mb": round(peak, 1), "cgroup_limit_hits": ooms})
        group.rmdir()
    return result


def _f1(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(train_x, train_y)
    return float(f1_score(test_y, model.predict(test_x), pos_label=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--big", type=int, default=6_000_000, help="rows for (c); 0 skips it")
    ap.add_argument("--cap-gb", type=float, default=4.0, help="memory cgroup limit of (c), both contenders")
    ap.add_argument("--capped", action="store_true")
    ap.add_argument("--worker", choices=["imblearn", "fulcrum"])
    ap.add_argument("--data")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        fn = run_imblearn if args.worker == "imblearn" else run_fulcrum
        print(json.dumps(fn(Path(args.data), Path(args.out), args.capped)))
        return

    import pyarrow.parquet as pq
    from sklearn.datasets import make_classification

    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-os-"))
    rows = []
    results = {}
    for n in [int(v) for v in args.sizes.split(",") if v]:
        data, out = tmp / f"data-{n}", tmp / f"out-{n}"
        out.mkdir(parents=True)
        # Train and held-out rows are one draw, split: same distribution (make_classification is seeded).
        x, y = make_classification(n_samples=n + 50_000, n_features=20, n_informative=8, n_redundant=4,
                                   weights=[0.9, 0.1], class_sep=0.8, flip_y=0.02, random_state=1)  # fmt: skip
        test_x, test_y, x, y = x[:50_000], y[:50_000], x[50_000:], y[50_000:]
        import pyarrow as pa

        data.mkdir()
        pq.write_table(pa.table({**{f: x[:, j] for j, f in enumerate(FEATURES)}, "y": y.astype(np.int64),
                                 "sample_id": [f"r{j:010d}" for j in range(n)]}), data / "part-0.parquet")  # fmt: skip
        imb = _child("imblearn", data, out, None)
        ful = _child("fulcrum", data, out, None)
        f1_none = _f1(x, y, test_x, test_y)
        f1_imb = _f1(np.vstack([x, np.load(out / "imblearn_x.npy")]),
                     np.concatenate([y, np.load(out / "imblearn_y.npy")]), test_x, test_y)  # fmt: skip
        made = pq.read_table(out / "fulcrum")
        fx = np.column_stack([made[f].to_numpy() for f in FEATURES])
        fy = np.array([int(v) for v in made["y"].to_pylist()])
        f1_ful = _f1(np.vstack([x, fx]), np.concatenate([y, fy]), test_x, test_y)
        results[n] = {"imblearn": imb, "fulcrum": ful, "f1": {"none": f1_none, "imblearn": f1_imb, "fulcrum": f1_ful}}
        rows.append([f"{n:,}", "imbalanced-learn SMOTE", imb["synthetic"], imb["seconds"], imb["peak_mb"], f1_imb,
                     f1_none])  # fmt: skip
        rows.append([f"{n:,}", "fulcrum smote (Spark local[2])", ful["synthetic"], ful["seconds"], ful["peak_mb"],
                     f1_ful, f1_none])  # fmt: skip
        print(rows[-2], rows[-1], flush=True)
    if rows:
        report("oversample", "SMOTE, 20 features, 10 % minority, k = 5: fulcrum (Spark) vs imbalanced-learn",
               ["rows", "method", "synthetic rows", "seconds", "peak MB", "minority F1 (LR)",
                "F1 without oversampling"], rows, {"results": results})  # fmt: skip
    if args.big:
        probe = memory_cgroup(0.1)
        if probe is None:
            print("(c) skipped: needs root and the cgroup-v1 memory controller")
            return
        probe.rmdir()
        big_rows = []
        control, data, out = tmp / "data-control", tmp / "data-big", tmp / "out-big"
        out.mkdir(parents=True)
        make_data(control, 1_000_000, seed=2)
        make_data(data, args.big, seed=2)
        runs = [(1_000_000, "imbalanced-learn SMOTE (control: fits)", "imblearn", control),
                (args.big, "imbalanced-learn SMOTE", "imblearn", data),
                (args.big, "fulcrum smote (Spark local[2], 2 GiB heap)", "fulcrum", data)]
        for n, name, who, folder in runs:
            r = _child(who, folder, out, args.cap_gb)
            results[f"{who}-{n}"] = r
            big_rows.append([f"{n:,}", name, r.get("synthetic", "-"), r.get("seconds", "-"),
                             r.get("cgroup_peak_mb", "-"), "finished" if r.get("ok") else r.get("error", "failed")])  # fmt: skip
            print(big_rows[-1], flush=True)
        report("oversample_memory", f"SMOTE in a {args.cap_gb:g} GiB memory cgroup (hard limit, both contenders)",
               ["rows", "method", "synthetic rows", "seconds", "cgroup peak MB", "outcome"], big_rows,
               {"cap_gb": args.cap_gb, "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
