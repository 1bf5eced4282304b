"""Scaling: the whole pipeline on 1×, 2× and 4× a generated dataset, seconds per stage.

A tabular dataset (10 numeric features, one categorical, 3 imbalanced classes learnable
from the features, 2 % exact and 2 % near duplicates, 0.2 % out-of-range values, 3 % of
labels flipped) and an image manifest (class-tinted random textures, 64×64 PNGs, 5 %
copies, 3 imbalanced classes) run through ingest → validate → curate → audit → oversample →
train at each size, each in a fresh lake, through the same ``iter_pipeline`` as
``fulcrum run`` (one Spark session; training as its own process with its own Ray, as the
CLI runs it). Per stage: seconds at each size and the growth exponent b of
seconds ∝ size^b (least squares on log-log; b ≈ 1 is linear, b < 1 means fixed costs
still dominate at these sizes). ``infra/SCALING.md`` projects these figures.

    python tests/bench/bench_scaling.py [--rows 200000] [--images 2000] [--factors 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]
CLASSES = ["a", "b", "c"]


def _suite(expectations: list[tuple[str, dict, str, str]]) -> dict:
    return {"name": "scale", "expectations": [{"type": t, "kwargs": kw, "meta": {"name": n, "policy": p}}
                                              for t, kw, n, p in expectations]}  # fmt: skip


def make_tabular(folder: Path, rows: int, seed: int = 0) -> Path:
    """Parquet source (8 files), suite and pipeline YAML; returns the YAML's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    base = int(rows / 1.04)
    x = rng.normal(0, 1, (base, len(FEATURES))).astype(np.float64)
    score = x[:, 0] + 0.8 * x[:, 1] - 0.6 * x[:, 2] + 0.3 * rng.normal(0, 1, base)
    y = np.where(score > 1.3, 2, np.where(score > 0.6, 1, 0))  # about 75 / 15 / 10 %
    flip = rng.random(base) < 0.03
    y = np.where(flip, (y + rng.integers(1, 3, base)) % 3, y)
    cat = rng.integers(0, 4, base)
    idx = np.concatenate([np.arange(base), rng.integers(0, base, rows - base)])  # the last 4 %: copies
    data = x[idx] * 10 + 50
    near = np.zeros(rows, bool)
    near[base + (rows - base) // 2:] = True  # half the copies are near: every value moved by <= 0.2 %
    data[near] *= 1 + rng.uniform(-0.002, 0.002, (int(near.sum()), len(FEATURES)))
    bad = rng.random(rows) < 0.002
    data[bad, 3] = 1e6
    table = {"record_id": [f"r{i:010d}" for i in range(rows)], "y": np.array(CLASSES)[y[idx]].tolist(),
             "cat": np.array(["p", "q", "r", "s"])[cat[idx]].tolist(),
             **{f: data[:, i].round(6) for i, f in enumerate(FEATURES)}}  # fmt: skip
    src = folder / "source"
    src.mkdir(parents=True)
    whole = pa.table(table)
    step = -(-rows // 8)
    for part in range(8):
        pq.write_table(whole.slice(part * step, step), src / f"part-{part}.parquet")
    suite = _suite([("expect_table_row_count_to_be_between", {"min_value": 100}, "enough_rows", "fail"),
                    ("expect_column_values_to_not_be_null", {"column": "y"}, "label_present", "drop"),
                    ("expect_column_values_to_be_in_set", {"column": "y", "value_set": CLASSES}, "label_known",
                     "drop"),
                    ("expect_column_values_to_be_unique", {"column": "record_id"}, "record_id_unique", "warn"),
                    *[("expect_column_values_to_be_between", {"column": f, "min_value": -100, "max_value": 200},
                       f"{f}_in_range", "drop") for f in FEATURES]])  # fmt: skip
    (folder / "scale.suite.json").write_text(json.dumps(suite))
    config = {"dataset": "scale", "kind": "tabular", "lake_root": "lake", "seed": 7,
              "source": {"path": "source", "format": "parquet"},
              "columns": {"id": "record_id", "label": "y",
                          "features": FEATURES + [{"name": "cat", "kind": "categorical"}]},
              "suite": "scale.suite.json",
              "clean": {"labels": {"classes": CLASSES}, "outliers": {"method": "iqr", "threshold": 3.0,
                                                                     "action": "flag"}},
              "dedup": {"near": {"tolerance": 0.05}},
              "split": {"folds": 5, "test_fraction": 0.2},
              "oversample": {"method": "smotenc", "k_neighbors": 5},
              "train": {"epochs": 1, "batch_size": 1024, "hidden": [64, 32]}}  # fmt: skip
    (folder / "scale.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "scale.yaml"


def make_images(folder: Path, images: int, seed: int = 0) -> Path:
    """A manifest of class-tinted random textures (5 % copies, some brightened), suite and YAML."""
    import pandas as pd
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    root = folder / "images"
    root.mkdir(parents=True)
    tint = np.array([[1.0, 0.6, 0.6], [0.6, 1.0, 0.6], [0.6, 0.6, 1.0]])
    base = int(images / 1.05)
    labels = rng.choice(3, base, p=[0.7, 0.2, 0.1])
    rows = []
    for i in range(base):
        low = rng.random((8, 8, 1)) * 200 + 55
        img = Image.fromarray((low * tint[labels[i]]).astype("uint8")).resize((64, 64), Image.Resampling.BICUBIC)
        img.save(root / f"i{i:07d}.png")
        rows.append((f"i{i:07d}", f"i{i:07d}.png", CLASSES[labels[i]]))
    for j in range(images - base):
        src = int(rng.integers(base))
        img = Image.open(root / f"i{src:07d}.png")
        if j % 2:
            img = ImageEnhance.Brightness(img).enhance(1.1)
        img.save(root / f"c{j:07d}.png")
        rows.append((f"c{j:07d}", f"c{j:07d}.png", CLASSES[labels[src]]))
    pd.DataFrame(rows, columns=["record_id", "path", "label"]).to_csv(folder / "manifest.csv", index=False)
    suite = _suite([("expect_table_row_count_to_be_between", {"min_value": 100}, "enough_rows", "fail"),
                    ("expect_column_values_to_be_in_set", {"column": "image_inside_root", "value_set": [True]},
                     "image_outside_root", "drop"),
                    ("expect_column_values_to_be_in_set", {"column": "image_decodable", "value_set": [True]},
                     "image_undecodable", "drop"),
                    ("expect_column_values_to_be_in_set", {"column": "label", "value_set": CLASSES}, "label_known",
                     "drop")])  # fmt: skip
    (folder / "scale.suite.json").write_text(json.dumps(suite))
    config = {"dataset": "scaleimg", "kind": "images", "lake_root": "lake", "seed": 7,
              "source": {"path": "manifest.csv", "format": "csv", "options": {"header": True}},
              "columns": {"id": "record_id", "label": "label", "features": []},
              "images": {"root": "images", "path_column": "path", "size": 16, "channels": 3, "embed": True},
              "suite": "scale.suite.json",
              "clean": {"labels": {"classes": CLASSES}},
              "split": {"folds": 5, "test_fraction": 0.2},
              "oversample": {"method": "random"},
              # An MLP on the 16×16 pixels: ResNet-18 on 2 CPU cores runs at ~26 images/s, which would
              # make this benchmark about the CPU's convolutions; bench_training.py measures those.
              "train": {"epochs": 1, "batch_size": 256, "model": "mlp", "hidden": [128, 64]}}  # fmt: skip
    (folder / "scale.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "scale.yaml"


def run_once(spark, config: Path) -> dict[str, dict]:
    """Every stage of the pipeline on one dataset: wall seconds per stage (as ``fulcrum run`` sees them) and
    the bytes of every Delta table it left."""
    from jobs import pipeline
    from jobs.config import load_config

    cfg = load_config(config)
    seconds, start = {}, time.perf_counter()
    for rep in pipeline.iter_pipeline(spark, cfg, f"scale-{int(time.time())}"):
        now = time.perf_counter()
        seconds[rep.stage] = round(now - start, 1)
        print(f"  {cfg.dataset} {rep.stage}: {seconds[rep.stage]:.1f} s, {rep.rows_in:,} in, {rep.rows_out:,} out",
              flush=True)  # fmt: skip
        start = now
    lake = Path(cfg.lake_dir)
    sizes = {t.name: sum(f.stat().st_size for f in t.rglob("*") if f.is_file())
             for t in lake.iterdir() if (t / "_delta_log").is_dir()}  # fmt: skip
    return {"seconds": seconds, "bytes": sizes}


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """b of seconds ∝ size^b, least squares on log-log."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(seconds, 1e-3)), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="tabular rows at 1×")
    parser.add_argument("--images", type=int, default=2_000, help="images at 1× (0: skip)")
    parser.add_argument("--factors", default="1,2,4")
    args = parser.parse_args()
    factors = [int(f) for f in args.factors.split(",")]

    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    spark = build_spark(SparkConfig(master="local[*]", driver_memory="8g"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        for kind, base, make in (("tabular rows", args.rows, make_tabular), ("images", args.images, make_images)):
            if not base:
                continue
            sizes, per_size = [base * f for f in factors], []
            for size in sizes:
                folder = tmp / f"{kind.split()[0]}-{size}"
                t0 = time.perf_counter()
                config = make(folder, size)
                print(f"{kind}: {size:,} generated in {time.perf_counter() - t0:.0f} s", flush=True)
                per_size.append(run_once(spark, config))
                shutil.rmtree(folder, ignore_errors=True)
            stages = list(per_size[0]["seconds"])
            rows = []
            for stage in [*stages, "total"]:
                secs = [sum(s["seconds"].values()) if stage == "total" else s["seconds"][stage] for s in per_size]
                rows.append([stage, *[round(s, 1) for s in secs], round(exponent(sizes, secs), 2),
                             round(sizes[-1] / secs[-1] / (os.cpu_count() or 1))])  # fmt: skip
            for table in per_size[-1]["bytes"]:
                rows.append([f"table {table}: bytes per input {kind[:-1]}",
                             *[round(s["bytes"].get(table, 0) / n, 1) for s, n in zip(per_size, sizes, strict=True)], "", ""])  # fmt: skip
            report(f"scaling_{kind.split()[0]}", f"Whole pipeline, seconds per stage against {kind} "
                   f"(b: growth exponent, seconds ∝ size^b; per core: {kind} per second per core at the largest size)",
                   ["stage", *[f"{s:,} {kind}" for s in sizes], "b", "per core"], rows,
                   {"sizes": sizes, "runs": per_size})  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
