"""SMOTE on Spark (fulcrum) against imbalanced-learn's SMOTE, on the same data in the same run.

(a) time and peak memory of SMOTE at 100k, 1M and 5M rows x 20 features (10 % minority), and
    fulcrum's time as a multiple of imbalanced-learn's;
(b) quality: a logistic regression trained on each oversampled set, minority-class F1 on the
    same held-out rows (and on the set without oversampling, for reference); and the recall@5
    of the neighbours fulcrum used, against exact neighbours (faiss flat search over the whole
    minority class, in the same standardised space) on 2,000 seeded synthetic rows: each row's
    neighbour was drawn uniformly from the 5 its source was given, so the share drawn from the
    exact 5 estimates recall@5;
(c) bounded memory: fulcrum at 5M and 20M rows inside one memory cgroup (8 GiB by default: a
    hard RSS limit, the kernel kills a process tree that exceeds it), with time, peak memory and
    the growth exponent log(t20M / t5M) / log 4. imbalanced-learn is not run at 20M: its exact
    k-NN of 2M minority rows is quadratic (its 5M time x 16, over an hour here). Needs root and
    the cgroup-v1 memory controller; skipped otherwise.

Each contender runs in its own process, so its peak memory is its own: for fulcrum the
Python driver, the JVM (driver and executors, local[2]) and the Python workers, sampled
every 50 ms; for imbalanced-learn the process's maximum RSS. Both read the same Parquet
files of ``sklearn.datasets.make_classification`` data (10 % minority).

    python tests/bench/bench_oversample.py [--sizes 100000,1000000,5000000] [--big 20000000] [--cap-gb 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
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

    heap = "3g" if capped else "6g"
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
    # Started before the clock, as in `fulcrum run`, where oversample is the fifth stage of one Spark session: the
    # JVM's first queries and the Python workers (a tiny Arrow UDF), on other data. imbalanced-learn's imports and
    # data loading are outside its clock as well.
    warm = spark.range(1000).withColumn("g", F.col("id") % 2)
    warm.groupBy("g").applyInArrow(lambda t: t.select(["g"]).slice(0, 1), "g long").collect()
    times = []
    for _ in range(1 if capped else 2):  # the second run: a session whose operators have run once (as in a pipeline)
        start = time.perf_counter()
        counts = {0: {str(r["y"]): r["count"] for r in silver.groupBy("y").count().collect()}}
        plan = oversample.plan_pools(counts, cfg, folds=1)  # pool 1: every row (the final model's)
        made = oversample.synthesize(silver, cfg, 1, plan)
        made.select(*FEATURES, "y", "synthetic_of", "synthetic_with").write.mode("overwrite").parquet(str(out / "fulcrum"))
        times.append(time.perf_counter() - start)
    seconds = times[-1]
    stop.set()
    watcher.join()
    spark.stop()
    return {"ok": True, "seconds": seconds, "seconds_cold": times[0], "peak_mb": peak[0], "heap": heap,
            "synthetic": sum(plan[1][c]["make"] for c in plan[1])}  # fmt: skip


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
        _remove(group)
    return result


def _recall(data: Path, made_dir: Path, samples: int = 2000) -> float:
    """recall@K of the neighbours fulcrum drew, against exact neighbours in the same standardised space."""
    import faiss
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    t = ds.dataset(data).to_table(filter=ds.field("y") == 1)
    x = np.column_stack([t[f].to_numpy() for f in FEATURES])
    z = np.ascontiguousarray((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0), dtype=np.float32)
    index = {sid: i for i, sid in enumerate(t["sample_id"].to_pylist())}
    made = pq.read_table(made_dir, columns=["synthetic_of", "synthetic_with"])
    pick = np.random.default_rng(0).choice(made.num_rows, min(samples, made.num_rows), replace=False)
    src = [index[v] for v in made["synthetic_of"].take(pick).to_pylist()]
    nb = [index[v] for v in made["synthetic_with"].take(pick).to_pylist()]
    flat = faiss.IndexFlatL2(z.shape[1])
    flat.add(z)
    _, near = flat.search(z[src], K + 1)
    return float(np.mean([b in set(row[row != a][:K]) for a, b, row in zip(src, nb, near, strict=True)]))


def _remove(group: Path, wait_s: float = 60.0) -> None:
    """Remove a cgroup once the processes the child left in it (Spark's JVM, Python workers) have exited; those
    still there after ``wait_s`` are stopped by their process ids (they are this benchmark's own)."""
    deadline = time.monotonic() + wait_s
    while (group / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    for _ in range(20):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.5)
    group.rmdir()


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
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--big", type=int, default=20_000_000, help="rows for (c); 0 skips it")
    ap.add_argument("--cap-gb", type=float, default=8.0, help="memory cgroup limit of (c)")
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
        recall = _recall(data, out / "fulcrum")
        ratio = ful["seconds"] / imb["seconds"]
        results[n] = {"imblearn": imb, "fulcrum": ful, "f1": {"none": f1_none, "imblearn": f1_imb, "fulcrum": f1_ful},
                      "recall_at_5": recall, "time_vs_imblearn": ratio}  # fmt: skip
        cold = ful["seconds_cold"] / imb["seconds"]
        rows.append([f"{n:,}", "imbalanced-learn SMOTE", imb["synthetic"], imb["seconds"], "-", "1.00x", imb["peak_mb"],
                     f1_imb, f1_none, "1.000 (exact)"])  # fmt: skip
        rows.append([f"{n:,}", "fulcrum smote (Spark local[2])", ful["synthetic"], ful["seconds"], ful["seconds_cold"],
                     f"{ratio:.2f}x ({cold:.2f}x cold)", ful["peak_mb"], f1_ful, f1_none, f"{recall:.3f}"])  # fmt: skip
        print(rows[-2], rows[-1], flush=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    if rows:
        report("oversample", "SMOTE, 20 features, 10 % minority, k = 5: fulcrum (Spark) vs imbalanced-learn",
               ["rows", "method", "synthetic rows", "seconds", "seconds, cold JVM", "time vs imbalanced-learn", "peak MB",
                "minority F1 (LR)", "F1 without oversampling", "neighbour recall@5"], rows, {"results": results})  # fmt: skip
    if args.big:
        probe = memory_cgroup(0.1)
        if probe is None:
            print("(c) skipped: needs root and the cgroup-v1 memory controller")
            return
        probe.rmdir()
        big_rows, times = [], {}
        for n in (args.big // 4, args.big):
            data, out = tmp / f"data-big-{n}", tmp / f"out-big-{n}"
            out.mkdir(parents=True)
            make_data(data, n, seed=2)
            r = _child("fulcrum", data, out, args.cap_gb)
            results[f"fulcrum-{n}"] = r
            times[n] = r.get("seconds")
            big_rows.append([f"{n:,}", "fulcrum smote (Spark local[2], 3 GiB heap)", r.get("synthetic", "-"),
                             r.get("seconds", "-"), r.get("cgroup_peak_mb", "-"),
                             "finished" if r.get("ok") else r.get("error", "failed")])  # fmt: skip
            print(big_rows[-1], flush=True)
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        small, big = times[args.big // 4], times[args.big]
        growth = math.log(big / small) / math.log(4) if small and big else None
        report("oversample_memory", f"SMOTE in a {args.cap_gb:g} GiB memory cgroup (hard limit): growth exponent "
               f"{growth if growth is None else round(growth, 3)} from {args.big // 4:,} to {args.big:,} rows",
               ["rows", "method", "synthetic rows", "seconds", "cgroup peak MB", "outcome"], big_rows,
               {"cap_gb": args.cap_gb, "growth_exponent": growth, "results": results})  # fmt: skip

if __name__ == "__main__":
    main()
