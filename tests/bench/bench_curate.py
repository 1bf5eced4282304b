"""Curate quality and speed.

1. On both samples, with the injection log as ground truth: precision and recall of
   exact-duplicate, near-duplicate, out-of-range and label-variant handling.
2. Generated tabular rows with 5 % near duplicates: dedup rows/s, and near-duplicate
   recall/precision against a brute-force pairwise comparison on a sample.
3. Image near duplicates on three sets (generated textures, low-detail digits, and
   patches of photographs held out from every choice): copies that are exact,
   brightened/darkened 15 %, JPEG q70, shifted 1-3 px, resized +-10 %, cropped 5 %.
   Recall per transform, pair precision and distinct images lost, for the NCC path
   (the default) beside the pHash-only path; images per second per core.

    python tests/bench/bench_curate.py [--rows 1000000 (0: skip)] [--images 20000] [--skip-samples]
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


def _textures(n: int, rng: np.random.Generator) -> list:
    """Generated 64 x 64 textures (random 8 x 8 fields, bicubic): detailed, every pair far apart."""
    return [_random_image(rng) for _ in range(n)]


def _digits() -> list:
    """scikit-learn's 1,797 8 x 8 digits at 32 px, as the sample has them: low detail, distinct images close."""
    from sklearn.datasets import load_digits

    from jobs.samples import _digit_png

    return [_digit_png(px) for px in load_digits().images]


def _patches() -> list:
    """64 x 64 patches of scikit-learn's two sample photographs on a 16 px grid (natural images; not a set the
    measure or its defaults were chosen on)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for photo in load_sample_images().images:
        img = Image.fromarray(photo)
        for y in range(0, photo.shape[0] - 64, 16):
            for x in range(0, photo.shape[1] - 64, 16):
                out.append(img.crop((x, y, x + 64, y + 64)))
    return out


def _shift(img, s: int):
    from PIL import Image

    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, -s, 0, 1, -s))


def _jpeg(img, quality: int = 70):
    from PIL import Image

    buf = _io.BytesIO()
    img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, "JPEG", quality=quality)
    return Image.open(_io.BytesIO(buf.getvalue()))


def _resize(img, f: float):
    from PIL import Image

    return img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BILINEAR)


def _crop(img, f: float = 0.05):
    dx, dy = round(img.width * f / 2), round(img.height * f / 2)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _brightness(img, f: float):
    from PIL import ImageEnhance

    return ImageEnhance.Brightness(img).enhance(f)


TRANSFORMS = {
    "exact": None, "brightened +15%": lambda i: _brightness(i, 1.15), "darkened -15%": lambda i: _brightness(i, 0.85),
    "JPEG q70": _jpeg, "shifted 1 px": lambda i: _shift(i, 1), "shifted 2 px": lambda i: _shift(i, 2),
    "shifted 3 px": lambda i: _shift(i, 3), "resized +10%": lambda i: _resize(i, 1.1),
    "resized -10%": lambda i: _resize(i, 0.9), "cropped 5%": _crop,
}  # fmt: skip
TARGETED = ("exact", "brightened +15%", "darkened -15%", "JPEG q70", "shifted 1 px", "shifted 2 px")


def _write_set(name: str, base: list, copies: int, root: Path, rng: np.random.Generator) -> tuple[list, dict]:
    """The base images plus ``copies`` copies (one transform each, in turn) of random base images; every file
    carries its base's label (index mod 3). (manifest rows, copy → (transform, source))."""
    root.mkdir(parents=True)
    rows, truth = [], {}
    for i, img in enumerate(base):
        img.save(root / f"{name}{i:06d}.png")
        rows.append((f"b{i:06d}", f"{name}{i:06d}.png", f"c{i % 3}"))
    kinds = list(TRANSFORMS)
    for j in range(copies):
        src = int(rng.integers(len(base)))
        kind = kinds[j % len(kinds)]
        sid, path = f"x{j:06d}", f"{name}_copy{j:06d}.png"
        if kind == "exact":
            (root / path).write_bytes((root / f"{name}{src:06d}.png").read_bytes())
        elif kind == "JPEG q70":
            path = path.replace(".png", ".jpg")
            buf = _io.BytesIO()
            base[src].convert("RGB").save(buf, "JPEG", quality=70)
            (root / path).write_bytes(buf.getvalue())
        else:
            TRANSFORMS[kind](base[src]).save(root / path)
        rows.append((sid, path, f"c{src % 3}"))
        truth[sid] = (kind, f"b{src:06d}")
    return rows, truth


def _score(found_rows: list, kept: set, truth: dict) -> dict:
    """Recall per transform (a copy in its source's group), pair precision (grouped pairs from one source) and
    distinct images lost (sources none of whose rows survive)."""
    group = {r["sample_id"]: r["dup_group"] for r in found_rows}
    origin = {sid: truth[sid][1] if sid in truth else sid for sid in group}
    recall = {}
    for kind in TRANSFORMS:
        pairs = [(c, b) for c, (k, b) in truth.items() if k == kind]
        recall[kind] = sum(group[c] == group[b] for c, b in pairs) / max(1, len(pairs))
    members: dict[str, list[str]] = {}
    for sid, g in group.items():
        members.setdefault(g, []).append(sid)
    grouped = right = 0
    for ids in members.values():
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                grouped += 1
                right += origin[ids[a]] == origin[ids[b]]
    alive = {origin[s] for s in kept}
    lost = len({o for o in origin.values()} - alive)
    return {"recall": recall, "pairs": grouped, "precision": right / grouped if grouped else 1.0, "lost": lost}


def image_quality(spark, tmp: Path, textures: int, sets: tuple[str, ...] = ("textures", "digits", "photo"),
                  verify: dict | None = None) -> tuple[list, dict]:
    """Three image sets with copies under every transform, each through the NCC path (the default) and the
    pHash-only path (``dedup.near.verify.measure: phash``, hamming 6): recall per transform, precision, lost."""
    import pandas as pd

    from jobs.config import parse_config
    from jobs.curation import dedup
    from jobs.validation.probe import probe_images

    rng = np.random.default_rng(0)
    makers = {"textures 64 px": lambda: _textures(textures, rng), "digits 32 px (low detail)": _digits,
              "photo patches 64 px (held out)": _patches}  # fmt: skip
    rows_out, extra = [], {}
    for name, make in makers.items():
        short = name.split()[0]
        if short not in sets:
            continue
        base = make()
        root = tmp / f"img-{short}"
        rows, truth = _write_set(short, base, len(base) // 3, root, rng)
        df = spark.createDataFrame(pd.DataFrame(rows, columns=["sample_id", "path", "y"])).repartition(8)
        start = time.perf_counter()
        probed = probe_images(df, "path", str(root), thumbnails=True).persist()
        probed.count()
        probe_s = time.perf_counter() - start
        for measure in ("ncc", "phash"):
            cfg = parse_config({"dataset": "bench", "kind": "images", "source": {"path": "x", "format": "csv"},
                                "columns": {"label": "y"}, "images": {"root": str(root)},
                                "dedup": {"near": {"verify": {"measure": measure, **(verify or {})}}}})  # fmt: skip
            start = time.perf_counter()
            how = dedup.plan(probed, cfg)
            found = dedup.find(probed, cfg, how).persist()
            result = dedup.remove(found, cfg, how)
            kept = {r["sample_id"] for r in result.kept.select("sample_id").collect()}
            seconds = time.perf_counter() - start
            score = _score(found.select("sample_id", "dup_group").collect(), kept, truth)
            found.unpersist()
            check = how.near_check
            setting = (f"NCC >= {check['threshold']:.4f} (auto{', exhaustive' if check['exhaustive'] else ''}"
                       f"{'' if check['exhaustive'] else ', ' + str(cfg.dedup.near.verify.tables) + ' tables'})"
                       if measure == "ncc" else "pHash <= 6 bits")  # fmt: skip
            rows_out.append([name, len(rows), setting] + [f"{score['recall'][k]:.2f}" for k in TRANSFORMS]
                            + [f"{score['precision']:.3f}", score["lost"], round(seconds, 1),
                               f"{len(rows) / (probe_s + seconds) / (os.cpu_count() or 1):.0f}"])  # fmt: skip
            extra[f"{short}/{measure}"] = {"images": len(rows), "copies": len(truth), "probe_seconds": probe_s,
                                           "dedup_seconds": seconds, **score, "near_check": check}  # fmt: skip
        probed.unpersist()
    return rows_out, extra


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=20_000, help="textures in the generated image set")
    parser.add_argument("--skip-samples", action="store_true")
    parser.add_argument("--sets", default="textures,digits,photo", help="image sets: textures, digits, photo")
    parser.add_argument("--tables", type=int, default=0, help="dedup.near.verify.tables (0: the default)")
    args = parser.parse_args()

    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    spark = build_spark(SparkConfig(master="local[*]", shuffle_partitions=8, driver_memory="8g"))
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-"))
    try:
        if not args.skip_samples:
            report("curate_quality", "curate on the samples, against the injection log",
                   ["dataset", "injected kind", "injected", "reached curate", "handled", "flagged", "precision",
                    "recall"], sample_quality(spark, tmp))  # fmt: skip
        verify = {"tables": args.tables} if args.tables else None
        images, image_extra = image_quality(spark, tmp, args.images, tuple(args.sets.split(",")), verify)
        report("curate_images", f"image near duplicates: recall per transform, pair precision, distinct images "
               f"lost, NCC (default) beside pHash only ({os.cpu_count()} cores)",
               ["set", "images", "path", *TRANSFORMS, "precision", "distinct lost", "dedup s", "images/s/core"],
               images, image_extra)  # fmt: skip
        if args.rows:
            tab, tab_extra = tabular_scale(spark, args.rows)
            report("curate_speed", f"tabular dedup at scale ({os.cpu_count()} cores); brute force on a 3,000-row "
                   "sample", ["data", "seconds", "rows/s", "recall of injected copies", "grouped pairs within "
                   "tolerance", "pairs within tolerance grouped"], [tab], {"tabular": tab_extra})  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
