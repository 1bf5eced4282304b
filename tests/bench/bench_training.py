"""Training benchmarks, each figure beside its peer in the same run.

(a) Ingestion: rows per second that a training step receives (the engine's data path: the
    pinned snapshot's Parquet files read by pyarrow, float32 built once, shared batches of the
    rows any slot trains on) against a raw pyarrow scan of the same files into the same tensors.
(b) One pass, many models: 5-fold cross-validation plus the final model in one run against one
    fold trained alone in the same run (one worker group each; target ≤ 1.5×).
(c) Image model throughput: ResNet-18 training images per second through the real loop, on
    the GPU when there is one (with its utilisation), else on the CPU.
(d) The augmentation alone (crop, turn, flip, colour jitter of every image, no model): fulcrum's batched
    warp against torchvision's v2 transforms image by image (what a Dataset's transform does) and, where
    it is installed, kornia's AugmentationSequential (fulcrum's augmentation until 2026-12-05): images
    per second and operator calls per batch (on a GPU each one is a kernel launch).

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
ROUNDS = 5  # rounds of (a); the medians are reported


def make_gold(spark, path: str, rows: int, features: int, seed: int = 0) -> None:
    """A gold-contract table written by the pipeline's own Delta writer (``jobs.lakehouse.tables.overwrite``): three
    classes, 20% held-out test rows, 5 folds, 10% synthetic rows per fold."""
    import json

    from pyspark.sql import functions as F

    from jobs.balancing.oversample import STATS_COLUMNS
    from jobs.lakehouse import tables

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
    test = F.col("fold").eqNullSafe(-1)  # the test part in files of its own, as `oversample` writes gold
    df = df.where(~test).unionByName(df.where(test))
    props = {"fulcrum.kind": "tabular", "fulcrum.folds": FOLDS, "fulcrum.classes": json.dumps(list("abc")),
             "fulcrum.features": json.dumps([{"name": f"f{j}", "kind": "numeric"} for j in range(features)]),
             "fulcrum.run_id": "bench", "delta.dataSkippingStatsColumns": STATS_COLUMNS}  # fmt: skip
    tables.overwrite(df, path, "bench", "bench", props)


def ingestion(gold_path: str, features: int, batch: int) -> list[list]:
    import pyarrow.dataset as pads
    import torch
    from deltalake import DeltaTable

    from training import data, loop
    from training.engine import cv_slots
    from training.gold import Contract, Gold

    gold = Gold.open(gold_path)
    files = DeltaTable(gold_path, version=gold.version).file_uris()
    columns = [f"f{j}" for j in range(features)]

    def scan(files: list[str] = files) -> int:
        scanned = 0
        for b in pads.dataset(files, format="parquet").to_batches(columns=[*columns, "label"], batch_size=batch):
            x = torch.from_numpy(np.column_stack([b.column(c).to_numpy() for c in columns]).astype(np.float32))
            y = torch.from_numpy(b.column("label").to_numpy().astype(np.int64))
            scanned += len(x) if len(y) == len(x) else 0
        return scanned

    def first_epoch(start: float):  # what each worker does once: its files (not the test part's), float32 once
        rows = data.load(gold, part="train")
        contract = Contract(rows.contract)
        masks = torch.from_numpy(np.stack([s.masks(contract, gold.folds)[0] for s in cv_slots(gold.folds)]))
        loaded = time.perf_counter() - start
        return rows, masks, torch.from_numpy(np.flatnonzero(masks.numpy().any(0))), loaded

    def epoch(rows, masks, union, seed=(0, 0, 0)) -> int:  # what the worker and train_epoch do before the models
        order = loop.shuffled(union, seed)
        return sum(len(xb) for xb, yb, mb, _ in loop.batches(rows.x, rows.y, masks, order,
                                                               loop.spans_of(len(order), batch)) if len(yb) == mb.shape[1])  # fmt: skip

    # Five rounds, each the raw scan then fulcrum's first epoch from a fresh read, then a later epoch; the
    # medians are reported (a single round swings ±30 % on a shared 2-core machine).
    raws, firsts, laters, reads, trains = [], [], [], [], []
    needed = gold.files("train")  # the files holding a row some fold trains or validates on
    for _ in range(ROUNDS):
        start = time.perf_counter()
        scanned = scan()
        raws.append(time.perf_counter() - start)
        start = time.perf_counter()
        scanned_train = scan(needed)
        trains.append(time.perf_counter() - start)
        start = time.perf_counter()
        rows, masks, union, loaded = first_epoch(start)
        delivered = epoch(rows, masks, union)
        firsts.append(time.perf_counter() - start)
        reads.append(loaded)
        start = time.perf_counter()
        epoch(rows, masks, union, (0, 1, 0))  # a later epoch (its own order): no read
        laters.append(time.perf_counter() - start)
        del rows, masks, union
    raw, first, later, loaded, train = (float(np.median(v)) for v in (raws, firsts, laters, reads, trains))
    rate = scanned / raw
    spread = f"rounds {min(raws):.2f}-{max(raws):.2f} s; {len(files)} files"
    return [
        [f"raw pyarrow scan → tensors (all rows), median of {ROUNDS}", scanned, round(raw, 3), round(rate), spread, 1.0],
        [f"raw pyarrow scan of the files fulcrum reads (no test-only file), median of {ROUNDS}", scanned_train,
         round(train, 3), round(scanned_train / train), f"{len(needed)} files", round(scanned_train / train / rate, 3)],
        [f"fulcrum, first epoch (read + float32 once + batches), median of {ROUNDS}", delivered, round(first, 3),
         round(delivered / first), f"read {loaded:.2f} s; rounds " + ", ".join(
             f"{delivered / f / (scanned / r):.2f}" for f, r in zip(firsts, raws, strict=True)),
         round(delivered / first / rate, 3)],
        [f"fulcrum, every later epoch (batches from memory), median of {ROUNDS}", delivered, round(later, 3),
         round(delivered / later), "", round(delivered / later / rate, 3)],
        *[[f"fulcrum over {e} epochs (the first epoch's read counted once), from the medians", e * delivered,
           round(first + (e - 1) * later, 3), round(e * delivered / (first + (e - 1) * later)), "",
           round(e * delivered / (first + (e - 1) * later) / rate, 3)] for e in (2, 5)],
    ]  # fmt: skip


def one_pass(gold_path: str, epochs: int, out: Path) -> tuple[list[list], dict]:
    import ray

    from training.contract import TrainSettings
    from training.cv import cross_validate, run_slots
    from training.engine import Slot
    from training.gold import Gold

    gold = Gold.open(gold_path)
    s = TrainSettings(epochs=epochs, batch_size=256, patience=epochs, warmup_steps=5, hidden=(64, 32), tensorboard=False)
    cpus = ray.cluster_resources()["CPU"]
    start = time.perf_counter()
    run_slots(gold, s, [Slot(0)], out / "one", cpus_per_worker=0.5)
    one = time.perf_counter() - start
    start = time.perf_counter()
    cv = cross_validate(gold, s, out / "cv")
    everything = time.perf_counter() - start
    rows = [
        ["one fold alone (its own worker group)", 1, round(one, 1), 1.0, ""],
        [f"{FOLDS} folds + the final model (one worker group)", FOLDS + 1, round(everything, 1),
         round(everything / one, 2), "target ≤ 1.5"],
    ]  # fmt: skip
    return rows, {"cluster_cpus": cpus, "ratio": round(everything / one, 2), "cv_seconds": cv["cv_seconds"]}


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

    slot = [loop.SlotModel(model, opt, sched, loop.EarlyStopping(), scaler)]
    every = torch.ones(1, images, dtype=torch.bool)

    def epoch():
        return loop.train_epoch(slot, x, y, every, torch.arange(images), batch, device,
                                transform=lambda xb: tf(xb))  # fmt: skip

    epoch()  # warm-up (cuDNN autotune, allocator)
    util = None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    epoch()
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


def augmentation(size: int, batch: int, batches: int) -> list[list]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torchvision.transforms import v2

    from training import augment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    ours = augment.augmenter(size, 3, flip=True)
    per_image = v2.Compose([v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=False),
                            v2.RandomHorizontalFlip(), v2.RandomRotation(10.0),
                            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)])  # fmt: skip

    def torchvision_each(b):
        return torch.stack([per_image(img.float().div(255.0)) for img in b]).mul_(2.0).sub_(1.0)

    ways = [("fulcrum: batched warp, per-image parameters", ours),
            ("torchvision v2 transforms, image by image", torchvision_each)]
    try:
        import kornia.augmentation as K

        kornia = K.AugmentationSequential(K.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
                                          K.RandomHorizontalFlip(), K.RandomRotation(10.0, p=1.0),
                                          K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, p=1.0))  # fmt: skip
        ways.append(("kornia AugmentationSequential (fulcrum's until 2026-12-05)",
                     lambda b: kornia(b.float().div(255.0)).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)))
    except ImportError:
        pass
    rows, base = [], None
    for name, fn in ways:
        fn(x)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(x)
        calls = sum(1 for e in prof.events() if e.name.startswith("aten::") and
                    (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / batches
        base = base or seconds
        rows.append([f"{size}x{size}, batch {batch}", name, calls, round(seconds * 1000, 1),
                     round(batch / seconds), round(seconds / base, 1)])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000, help="gold rows for (a)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--cv-rows", type=int, default=20_000, help="gold rows for (b)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fold for (b)")
    parser.add_argument("--images", type=int, default=None, help="images for (c) (default: 512 CPU, 20000 GPU)")
    args = parser.parse_args()

    import torch

    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark
    from training import runtime

    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-train-"))
    spark = build_spark(SparkConfig(master="local[*]", shuffle_partitions=8, driver_memory="6g"))
    make_gold(spark, str(tmp / "big"), args.rows, args.features)
    make_gold(spark, str(tmp / "small"), args.cv_rows, args.features)
    spark.stop()

    a = ingestion(str(tmp / "big"), args.features, args.batch)  # before Ray starts: its start-up takes the cores
    report("training_ingestion", f"(a) training data path vs raw pyarrow scan: {args.rows:,} gold rows × "
           f"{args.features} features, batches of {args.batch}",
           ["path", "rows", "seconds", "rows/s", "note", "vs raw scan"], a)  # fmt: skip
    runtime.init_ray()
    try:
        b, extra = one_pass(str(tmp / "small"), args.epochs, tmp / "cv")
        report("training_one_pass", f"(b) one pass, many models: {args.cv_rows:,} rows, {FOLDS} folds + final × "
               f"{args.epochs} epochs, {extra['cluster_cpus']:g} logical CPUs",
               ["run", "models", "seconds", "× one fold alone", "target"], b, extra)  # fmt: skip
    finally:
        runtime.shutdown()
    gpu = torch.cuda.is_available()
    images = args.images or (20_000 if gpu else 512)
    c = image_model(images, 32, 256 if gpu else 64)
    if gpu:
        c += image_model(images // 4, 128, 128)
    report("training_images", "(c) image model training throughput (through training.loop)",
           ["model", "device", "images", "seconds", "images/s", "GPU utilisation"], c)  # fmt: skip
    d = augmentation(32, 256, 20 if gpu else 5) + augmentation(128, 128, 20 if gpu else 3)
    report("training_augmentation", f"(d) augmentation alone, 3 channels, on the {'GPU' if gpu else 'CPU'}",
           ["images", "augmentation", "operator calls per batch", "ms per batch", "images/s", "× fulcrum's time"], d)  # fmt: skip


if __name__ == "__main__":
    main()
