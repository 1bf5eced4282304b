"""Training benchmarks, each figure beside its peer in the same run.

(a) Ingestion: rows per second that the training data path delivers (``ray.data.read_delta``
    at a pinned version → fold 0's training rows → standardised float32 tensors in batches)
    against a raw pyarrow scan of the same Parquet files into the same tensors.
(b) Cross-validation scaling: k=5 folds run concurrently (slots planned from the cluster)
    against the same folds one at a time, and against the ideal (one fold × k / slots).
(c) Image model throughput: ResNet-18 training images per second through the real loop, on
    the GPU when there is one (with its utilisation), else on the CPU.

    python tests/bench/bench_training.py [--rows 2000000] [--cv-rows 20000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402

FOLDS = 5


def make_gold(spark, path: str, rows: int, features: int, seed: int = 0) -> None:
    """A gold-contract table written by the pipeline's own Delta writer (``jobs.lake.tables.overwrite``): three
    classes, 20% held-out test rows, 5 folds, 10% synthetic rows per fold."""
    import json

    from pyspark.sql import functions as F

    from jobs.lake import tables

    ids = spark.range(rows, numPartitions=max(4, rows // 250_000))
    synthetic = F.rand(seed + 1) < 0.1
    real_fold = F.when(F.rand(seed + 2) < 0.2, F.lit(-1)).otherwise(F.col("id") % FOLDS)
    df = ids.select(
        F.substring(F.sha2(F.col("id").cast("string"), 256), 1, 16).alias("sample_id"),
        (F.rand(seed + 3) * 3).cast("int").alias("label"),
        F.when(synthetic, F.lit(None)).otherwise(real_fold).cast("int").alias("fold"),
        F.when(synthetic, F.col("id") % (FOLDS + 1)).cast("int").alias("synthetic_for"),
        F.lit(None).cast("array<int>").alias("dropped_for"),
        F.lit(False).alias("augment"),
        *[(F.randn(seed + 10 + j) + F.col("id") % 3 * 0.3).cast("float").alias(f"f{j}") for j in range(features)],
    )  # fmt: skip
    df = df.withColumn("class_name", F.element_at(F.array(*map(F.lit, "abc")), F.col("label") + 1))
    props = {"fulcrum.kind": "tabular", "fulcrum.folds": FOLDS, "fulcrum.classes": json.dumps(list("abc")),
             "fulcrum.features": json.dumps([{"name": f"f{j}", "kind": "numeric"} for j in range(features)]),
             "fulcrum.run_id": "bench"}  # fmt: skip
    tables.overwrite(df, path, "bench", "bench", props)


def ingestion(gold_path: str, features: int, batch: int) -> list[list]:
    import pyarrow.dataset as pads
    import torch
    from deltalake import DeltaTable

    from training import data
    from training.gold import Gold
    from training.worker import _batches

    gold = Gold.open(gold_path)
    files = DeltaTable(gold_path, version=gold.version).file_uris()
    columns = [f"f{j}" for j in range(features)]
    start = time.perf_counter()
    scanned = 0
    for b in pads.dataset(files, format="parquet").to_batches(columns=[*columns, "label"], batch_size=batch):
        x = torch.from_numpy(np.column_stack([b.column(c).to_numpy() for c in columns]).astype(np.float32))
        y = torch.from_numpy(b.column("label").to_numpy().astype(np.int64))
        scanned += len(x) if len(y) == len(x) else 0
    raw = time.perf_counter() - start

    start = time.perf_counter()
    train, _, _ = data.fold_datasets(gold, 0, cache=False)  # lazy, after the encoder's one fitting pass
    fit = time.perf_counter() - start
    start = time.perf_counter()
    delivered = 0
    for x, _ in _batches(train, batch):  # exactly what each Ray Train worker iterates
        delivered += len(x)
    ours = time.perf_counter() - start
    total = DeltaTable(gold_path, version=gold.version).to_pyarrow_dataset().count_rows()
    return [
        ["raw pyarrow scan → tensors (all rows)", scanned, round(raw, 2), round(scanned / raw), "", 1.0],
        ["fulcrum fold 0 training set (rows delivered)", delivered, round(ours, 2), round(delivered / ours),
         f"encoder fit {fit:.1f} s", round(delivered / ours / (scanned / raw), 3)],
        ["fulcrum, gold rows read per second", total, round(ours, 2), round(total / ours), "", round(total / ours / (scanned / raw), 3)],
    ]  # fmt: skip


def scaling(gold_path: str, epochs: int, out: Path) -> tuple[list[list], dict]:
    import ray

    from training.cv import Settings, cross_validate, run_fold
    from training.gold import Gold

    gold = Gold.open(gold_path)
    s = Settings(epochs=epochs, batch_size=256, patience=epochs, warmup_steps=5, hidden=(64, 32))
    cpus = ray.cluster_resources()["CPU"]
    start = time.perf_counter()
    run_fold(gold, s, 0, out / "one", cpus_per_worker=0.5)
    one = time.perf_counter() - start
    sequential = cross_validate(gold, Settings(**{**s.__dict__, "concurrency": 1}), out / "seq")
    concurrent = cross_validate(gold, s, out / "par")
    slots = concurrent["concurrent_folds"]
    ideal = one * math.ceil(FOLDS / slots)
    rows = [
        ["one fold alone", 1, round(one, 1), "", ""],
        [f"{FOLDS} folds, one at a time", 1, sequential["cv_seconds"], round(one * FOLDS, 1),
         round(one * FOLDS / sequential["cv_seconds"], 2)],
        [f"{FOLDS} folds concurrently", slots, concurrent["cv_seconds"], round(ideal, 1),
         round(ideal / concurrent["cv_seconds"], 2)],
    ]  # fmt: skip
    return rows, {"cluster_cpus": cpus, "speedup_vs_sequential": round(sequential["cv_seconds"] / concurrent["cv_seconds"], 2)}


def image_model(images: int, size: int, batch: int) -> list[list]:
    import torch

    from training import augment, loop, models

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    model = models.build("images", classes=10, channels=3, size=size).to(device)
    opt = loop.make_optimizer(model, 1e-3, 1e-4)
    steps = math.ceil(images / batch)
    sched = loop.cosine_with_warmup(opt, 5, 2 * steps)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    tf = augment.augmenter(size, 3, True)

    def batches():
        for i in range(0, images, batch):
            yield tf(x[i : i + batch]), y[i : i + batch]

    loop.train_epoch(model, batches(), opt, sched, device, scaler=scaler)  # warm-up (cuDNN autotune, allocator)
    util = None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loop.train_epoch(model, batches(), opt, sched, device, scaler=scaler)
    if device.type == "cuda":
        torch.cuda.synchronize()
        try:
            util = torch.cuda.utilization()
        except Exception:  # needs nvidia-ml-py
            util = None
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return [[f"ResNet-18 {size}x{size}, batch {batch}, augmented", name, images, round(seconds, 2),
             round(images / seconds, 1), "n/a" if util is None else f"{util}%"]]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000, help="gold rows for (a)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--cv-rows", type=int, default=20_000, help="gold rows for (b)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fold for (b)")
    parser.add_argument("--images", type=int, default=None, help="images for (c) (default: 512 CPU, 20000 GPU)")
    args = parser.parse_args()

    import torch

    from jobs.config import SparkConfig
    from jobs.lake.session import build_spark
    from training import runtime

    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-train-"))
    spark = build_spark(SparkConfig(master="local[*]", shuffle_partitions=8, driver_memory="6g"))
    make_gold(spark, str(tmp / "big"), args.rows, args.features)
    make_gold(spark, str(tmp / "small"), args.cv_rows, args.features)
    spark.stop()

    runtime.init_ray()
    try:
        a = ingestion(str(tmp / "big"), args.features, args.batch)
        report("training_ingestion", f"(a) training data path vs raw pyarrow scan: {args.rows:,} gold rows × "
               f"{args.features} features, batches of {args.batch}",
               ["path", "rows", "seconds", "rows/s", "note", "vs raw scan"], a)  # fmt: skip
        b, extra = scaling(str(tmp / "small"), args.epochs, tmp / "cv")
        report("training_cv_scaling", f"(b) cross-validation scaling: {args.cv_rows:,} rows, {FOLDS} folds × "
               f"{args.epochs} epochs, {extra['cluster_cpus']:g} logical CPUs",
               ["run", "folds at once", "seconds", "ideal seconds", "ideal / measured"], b, extra)  # fmt: skip
    finally:
        runtime.shutdown()
    gpu = torch.cuda.is_available()
    images = args.images or (20_000 if gpu else 512)
    c = image_model(images, 32, 256 if gpu else 64)
    if gpu:
        c += image_model(images // 4, 128, 128)
    report("training_images", "(c) image model training throughput (through training.loop)",
           ["model", "device", "images", "seconds", "images/s", "GPU utilisation"], c)  # fmt: skip


if __name__ == "__main__":
    main()
