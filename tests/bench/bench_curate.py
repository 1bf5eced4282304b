"""Curate quality and speed.

1. On both samples, with the injection log as ground truth: precision and recall of
   exact-duplicate, near-duplicate, out-of-range and label-variant handling.
2. Generated tabular rows with 5 % near duplicates: dedup rows/s, and near-duplicate
   recall/precision against a brute-force pairwise comparison on a sample.
3. Generated images with shifted / brightened / re-encoded copies: probe + dedup
   images/s, recall per copy kind, precision against brute force on a sample.

    python tests/bench/bench_curate.py [--rows 1000000] [--images 20000]
"""

from __future__ import annotations

import argparse
import io as _io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402


def _pr(tp: int, found: int, truth: int) -> tuple[str, str]:
    return (f"{tp / found:.3f}" if found else "-", f"{tp / truth:.3f}" if truth else "-")


def sample_quality(spark, tmp: Path) -> list[list]:
    from jobs import ingest
    from jobs.config import load_config
    from jobs.curation import curate
    from jobs.lakehouse import tables
    from jobs.samples import make_samples
    from jobs.validation import validate

    rows = []
    for path in make_samples(tmp / "samples", seed=7):
        cfg = load_config(path)
        ingest.run(spark, cfg, "i"), validate.run(spark, cfg, "v"), curate.run(spark, cfg, "c")
        lake = tables.Lake(cfg.lake_dir)
        key, label = cfg.columns.id, cfg.columns.label
        bronze = {r[key]: r for r in tables.read(spark, lake.path("bronze")).collect()}
        silver = {r[key]: r for r in tables.read(spark, lake.path("silver")).collect()}
        quarantine = {r[key]: r for r in tables.read(spark, lake.path("quarantine")).collect()}
        injected = [json.loads(x) for x in (path.parent / "injections.jsonl").read_text().splitlines()]

        groups = {r: q["dup_group"] for r, q in quarantine.items() if q["stage"] == "dedup"}
        groups.update({r: row["dup_group"] for r, row in silver.items()})
        group = groups.get

        for kind in ("exact_duplicate", "near_duplicate"):
            pairs = [(e["record_id"], e["of"]) for e in injected if e["kind"] == kind]
            reached = [p for p in pairs if group(p[0]) is not None and group(p[1]) is not None]
            hit = sum(group(a) == group(b) for a, b in reached)
            members = {x for p in pairs for x in p}
            removed = [r for r, q in quarantine.items() if q["reason"] == kind]
            precision, recall = _pr(sum(r in members for r in removed), len(removed), len(reached))
            rows.append([cfg.dataset, kind, len(pairs), len(reached), hit, len(removed), precision, recall])
        out_rows = {e["record_id"] for e in injected if e["kind"] == "out_of_range"}
        if out_rows:
            flagged = {
                r for r, q in quarantine.items() if q["stage"] == "validate" and q["reason"].endswith("_in_range")
            }
            precision, recall = _pr(len(flagged & out_rows), len(flagged), len(out_rows))
            rows.append([cfg.dataset, "out_of_range", len(out_rows), len(out_rows), len(flagged & out_rows),
                         len(flagged), precision, recall])  # fmt: skip
        variants = {e["record_id"]: e["original"] for e in injected if e["kind"] == "label_variant"}
        reached = {r: o for r, o in variants.items() if r in silver}
        right = sum(silver[r][label] == o for r, o in reached.items())
        changed = [r for r in silver if str(bronze[r][label]) != silver[r][label]]
        precision, _ = _pr(sum(r in variants for r in changed), len(changed), len(reached))
        rows.append([cfg.dataset, "label_variant", len(variants), len(reached), right, len(changed), precision,
                     f"{right / len(reached):.3f}" if reached else "-"])  # fmt: skip
    return rows


def tabular_scale(spark, rows: int, sample: int = 3000) -> tuple[list, dict]:
    """``rows`` rows, 5 % of them near copies (every value moved by <= 0.2 %) of other rows."""
    from pyspark.sql import functions as F

    from jobs.config import parse_config
    from jobs.curation import dedup

    features = [f"f{i}" for i in range(10)]
    base_n = int(rows / 1.05)
    base = spark.range(base_n, numPartitions=8).select(
        F.format_string("b%09d", "id").alias("sample_id"), F.col("id").alias("base"),
        *[(F.randn(seed=i) * (10 ** (i % 4)) + 5 * 10 ** (i % 4)).alias(f) for i, f in enumerate(features)],
        F.when(F.rand(seed=99) < 0.3, "pos").otherwise("neg").alias("y"))  # fmt: skip
    picked = base.where(F.xxhash64("base", F.lit(7)) % 1000 < 50).limit(rows - base_n)
    copies = picked.select(F.concat(F.lit("c"), F.col("sample_id")).alias("sample_id"), "base",
                           *[(F.col(f) * (1 + (F.rand(seed=100 + i) - 0.5) * 0.004)).alias(f)
                             for i, f in enumerate(features)], "y")  # fmt: skip
    df = base.unionByName(copies).persist()
    total, n_copies = df.count(), copies.count()
    cfg = parse_config({"dataset": "bench", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                        "columns": {"label": "y", "features": features}})  # fmt: skip
    start = time.perf_counter()
    found = dedup.find(df, cfg).persist()
    result = dedup.remove(found, cfg)
    kept = result.kept.count()
    seconds = time.perf_counter() - start
    groups = {r["sample_id"]: (r["dup_group"], r["base"]) for r in found.select("sample_id", "dup_group", "base")
              .where(F.col("sample_id").startswith("c")).collect()}  # fmt: skip
    base_group = {r["base"]: r["dup_group"] for r in found.where(F.col("sample_id").startswith("b"))
                  .join(copies.select("base"), "base").select("base", "dup_group").collect()}  # fmt: skip
    recall = sum(g == base_group.get(b) for g, b in groups.values()) / max(1, len(groups))
    # Brute force on a sample: every pair within tolerance, against the pairs dedup grouped.
    pdf = found.orderBy(F.xxhash64("base")).limit(sample).select("sample_id", "dup_group", *features).toPandas()
    tol = cfg.dedup.near.tolerance
    stds = df.agg(*[F.stddev_samp(f).alias(f) for f in features]).first().asDict()
    x = pdf[features].to_numpy() / np.array([stds[f] for f in features])
    close = np.all(np.abs(x[:, None, :] - x[None, :, :]) <= tol, axis=2)
    same = pdf["dup_group"].to_numpy()[:, None] == pdf["dup_group"].to_numpy()[None, :]
    upper = np.triu(np.ones_like(close, dtype=bool), 1)
    truth, grouped = int((close & upper).sum()), int((same & upper).sum())
    agree = int((close & same & upper).sum())
    found.unpersist(), df.unpersist()
    return [f"{total:,} rows, {n_copies:,} near copies", seconds, total / seconds, f"{recall:.3f}",
            f"{agree}/{grouped}", f"{agree}/{truth}"], {"kept": kept}  # fmt: skip


def _random_image(rng: np.random.Generator, size: int = 64):
    from PIL import Image

    low = rng.random((8, 8)) * 255
    img = Image.fromarray(low.astype("uint8")).resize((size, size), Image.Resampling.BICUBIC)
    return img.convert("RGB")


def image_scale(spark, images: int, tmp: Path, sample: int = 3000) -> tuple[list, dict]:
    """``images`` PNGs: 90 % distinct random textures, 10 % shifted / brightened / re-encoded copies."""
    import pandas as pd
    from PIL import Image, ImageEnhance
    from pyspark.sql import functions as F

    from jobs.config import parse_config
    from jobs.curation import dedup
    from jobs.validation.probe import probe_images

    rng = np.random.default_rng(0)
    root = tmp / "images"
    root.mkdir()
    n_copies = images // 10
    rows, kinds = [], {}
    for i in range(images - n_copies):
        _random_image(rng).save(root / f"b{i:06d}.png")
        rows.append((f"b{i:06d}", f"b{i:06d}.png", "pos" if i % 3 else "neg"))
    for j in range(n_copies):
        src = int(rng.integers(images - n_copies))
        img = Image.open(root / f"b{src:06d}.png")
        kind = ("shifted", "brightened", "reencoded")[j % 3]
        name = f"c{j:06d}_{src:06d}"
        if kind == "shifted":
            img.transform(img.size, Image.Transform.AFFINE, (1, 0, -1, 0, 1, -1)).save(root / f"{name}.png")
            path = f"{name}.png"
        elif kind == "brightened":
            ImageEnhance.Brightness(img).enhance(1.15).save(root / f"{name}.png")
            path = f"{name}.png"
        else:
            buf = _io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            (root / f"{name}.jpg").write_bytes(buf.getvalue())
            path = f"{name}.jpg"
        rows.append((name, path, "pos" if src % 3 else "neg"))
        kinds[name] = (kind, f"b{src:06d}")
    df = spark.createDataFrame(pd.DataFrame(rows, columns=["sample_id", "path", "y"])).repartition(8)
    cfg = parse_config({"dataset": "bench", "kind": "images", "source": {"path": "x", "format": "csv"},
                        "columns": {"label": "y"}, "images": {"root": str(root)}})  # fmt: skip
    start = time.perf_counter()
    probed = probe_images(df, "path", str(root)).persist()
    probed.count()
    probe_s = time.perf_counter() - start
    found = dedup.find(probed, cfg).persist()
    kept = dedup.remove(found, cfg).kept.count()
    seconds = time.perf_counter() - start
    group = {r["sample_id"]: r["dup_group"] for r in found.select("sample_id", "dup_group").collect()}
    recall = {}
    for kind in ("shifted", "brightened", "reencoded"):
        pairs = [(c, b) for c, (k, b) in kinds.items() if k == kind]
        recall[kind] = sum(group[c] == group[b] for c, b in pairs) / max(1, len(pairs))
    pdf = found.orderBy(F.xxhash64("sample_id")).limit(sample).select("dup_group", "image_phash").toPandas()
    hashes = np.array([int(h, 16) for h in pdf["image_phash"]], dtype=np.uint64)
    xor = hashes[:, None] ^ hashes[None, :]
    bits = np.unpackbits(xor.view(np.uint8).reshape(len(hashes), len(hashes), 8), axis=2).sum(axis=2)
    upper = np.triu(np.ones_like(bits, dtype=bool), 1)
    close = (bits <= cfg.dedup.near.hamming) & upper
    same = (pdf["dup_group"].to_numpy()[:, None] == pdf["dup_group"].to_numpy()[None, :]) & upper
    found.unpersist(), probed.unpersist()
    return [f"{images:,} images, {n_copies:,} copies", seconds, images / seconds,
            ", ".join(f"{k} {v:.3f}" for k, v in recall.items()),
            f"{int((close & same).sum())}/{int(same.sum())}", f"{int((close & same).sum())}/{int(close.sum())}"], \
        {"probe_seconds": probe_s, "kept": kept, "recall": recall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args()

    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    spark = build_spark(SparkConfig(master="local[*]", shuffle_partitions=8, driver_memory="8g"))
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-"))
    try:
        quality = sample_quality(spark, tmp)
        report("curate_quality", "curate on the samples, against the injection log",
               ["dataset", "injected kind", "injected", "reached curate", "handled", "flagged", "precision",
                "recall"], quality)  # fmt: skip
        tab, tab_extra = tabular_scale(spark, args.rows)
        img, img_extra = image_scale(spark, args.images, tmp)
        report("curate_speed", f"dedup at scale ({os.cpu_count()} cores); brute force on a 3,000-row sample",
               ["data", "seconds", "rows/s", "recall of injected copies", "grouped pairs within tolerance",
                "pairs within tolerance grouped"], [tab, img], {"tabular": tab_extra, "images": img_extra})  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
