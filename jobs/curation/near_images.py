"""Image near duplicates in two stages: candidates, then a pixel check; groups anchored on their survivor.

A 64-bit pHash alone cannot tell a copy shifted by a pixel from a different low-detail image
(on 32 px digits a one-pixel shift moves it by 12 bits, while unrelated digits are 10 bits
apart at the 0.1 % quantile), so the hash only finds exact content here and the decision is
made on pixels:

- **measure**: the normalised cross-correlation (NCC) of the two images' 32 x 32 grayscale
  thumbnails (the probe's, the pixels behind the pHash), the best over every shift of up to
  ``max_shift`` pixels each way. The central (32 − 2m)² window of one image is correlated
  with each shifted window of the other, both ways; each window is centred and scaled to
  unit norm first, so a brightness or contrast change costs nothing and an integer shift
  nothing but the border. One BLAS product per shift over all pairs of a bucket.
- **candidates**: up to ``bucket_rows`` images (one per exact copy set) every pair is
  compared, exhaustively. Above, each of ``tables`` seeded random projections of the images'
  pooled 8 x 8 thumbnails and low-frequency magnitudes (``embed``) cuts them into buckets of about ``bucket_rows`` by its quantiles,
  and every pair inside a bucket is compared (a copy is split from its source only when a cut
  falls between them in every table).
- **threshold**: ``auto`` measures this table first. The NCC of every pair of a seeded
  sample of images (``sample``, 400: about 80,000 random pairs) gives d, the distance
  (1 − NCC) of the closest 0.1 % of unrelated pairs; a copy must be ``ratio`` times closer:
  threshold = max(floor, 1 − d / ratio) (0.99 under 46 images, too few pairs to calibrate
  on: the closest of them are the copies). On detailed images d is large and the threshold
  tolerates resampling; on low-detail images, where distinct images are close, it tightens.
  A fixed threshold is checked against the same sample: if it accepts more than
  ``max_random_share`` of random pairs, a warning gives the figures and auto's value.
- **groups**: verified pairs are joined into connected components; then every member must
  verify against its group's anchor (the smallest id, the survivor) itself, not only against
  a neighbour of a neighbour. Members that do not are taken out and grouped again among
  themselves (up to ``ROUNDS`` times); what is left stands alone. So a chain A ~ B ~ C with A
  and C distinct never puts A and C in one group.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import VerifyConfig
from jobs.validation.probe import THUMB

log = logging.getLogger(__name__)

ID = "sample_id"
THUMBS = "image_thumb"
RANDOM_QUANTILE = 0.001  # d: the distance of the closest 0.1 % of random pairs
MIN_PAIRS = 1000  # fewer random pairs (under 46 images) calibrate nothing: their closest are the copies themselves
SMALL_TABLE = 0.99  # auto's threshold then
ROUNDS = 3  # regroupings of the members that did not verify against their anchor
POOL = 8  # the pooled thumbnail whose projections cut large tables into buckets


# ------------------------------------------------------------------ the measure (numpy)


def decode(blobs) -> np.ndarray:
    """Thumbnail bytes (THUMB² uint8 each) → (n, THUMB, THUMB) float32."""
    flat = np.frombuffer(b"".join(blobs), dtype=np.uint8) if len(blobs) else np.zeros(0, np.uint8)
    return flat.reshape(-1, THUMB, THUMB).astype(np.float32)


def windows(pixels: np.ndarray, shift: int) -> np.ndarray:
    """(n, (2m+1)², w²): every image's w x w windows (w = side − 2m) at each shift, centred and scaled to unit
    norm; index (2m+1)² // 2 is the central window. A flat window (no contrast) stays zero."""
    n, side = pixels.shape[0], pixels.shape[1]
    w = side - 2 * shift
    out = np.empty((n, (2 * shift + 1) ** 2, w * w), np.float32)
    k = 0
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            out[:, k] = pixels[:, dy : dy + w, dx : dx + w].reshape(n, -1)
            k += 1
    out -= out.mean(axis=2, keepdims=True)
    norm = np.linalg.norm(out, axis=2, keepdims=True)
    np.divide(out, norm, out=out, where=norm > 1e-3)
    out[np.broadcast_to(norm <= 1e-3, out.shape)] = 0.0
    return out


def _flat(pixels: np.ndarray) -> np.ndarray:
    return (pixels.max(axis=(1, 2)) - pixels.min(axis=(1, 2))) < 2  # one grey level: NCC is undefined


def _flat_match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two flat images are copies when their grey levels are within 8 of 255 (a brightened blank)."""
    return np.abs(a.reshape(len(a), -1).mean(1)[:, None] - b.reshape(len(b), -1).mean(1)[None, :]) <= 8


def all_pairs(pixels: np.ndarray, shift: int) -> np.ndarray:
    """(n, n) symmetric NCC, the best over shifts (diagonal included)."""
    win = windows(pixels, shift)
    centre = win[:, win.shape[1] // 2]
    best = np.full((len(pixels), len(pixels)), -1.0, np.float32)
    for k in range(win.shape[1]):
        np.maximum(best, win[:, k] @ centre.T, out=best)
    best = np.maximum(best, best.T)
    flat = _flat(pixels)
    if flat.any():  # a flat image correlates with nothing; two flat ones are copies when equally grey
        best[flat, :] = -1.0
        best[:, flat] = -1.0
        f = np.flatnonzero(flat)
        best[np.ix_(f, f)] = np.where(_flat_match(pixels[f], pixels[f]), 1.0, -1.0)
    return best


def pair_scores(a: np.ndarray, b: np.ndarray, shift: int) -> np.ndarray:
    """NCC of a[i] with b[i], the best over shifts, both ways."""
    wa, wb = windows(a, shift), windows(b, shift)
    c = wa.shape[1] // 2
    best = np.maximum(np.einsum("nkd,nd->nk", wa, wb[:, c]).max(1), np.einsum("nkd,nd->nk", wb, wa[:, c]).max(1))
    fa, fb = _flat(a), _flat(b)
    both = fa & fb
    best[fa | fb] = -1.0
    if both.any():
        best[both] = np.where(np.diag(_flat_match(a[both], b[both])), 1.0, -1.0)
    return best


def calibrate(pixels: np.ndarray, v: VerifyConfig) -> dict[str, Any]:
    """The random-pair self-check on a sample of thumbnails: the NCC distribution of every pair, the threshold
    (auto's, or the configured one) and the share of random pairs it accepts, with a warning when too many."""
    n = len(pixels)
    scores = all_pairs(pixels, v.max_shift)[np.triu_indices(n, 1)] if n > 1 else np.zeros(0)
    out: dict[str, Any] = {"sample_images": n, "random_pairs": int(len(scores)),
                           "mode": "auto" if v.threshold == "auto" else "configured", "ratio": v.ratio}  # fmt: skip
    if not len(scores):
        out.update(threshold=1.0 if v.threshold == "auto" else float(v.threshold), auto=None, accepted_share=0.0)
        return out
    d = float(np.quantile(1.0 - scores, RANDOM_QUANTILE))
    auto = max(v.floor, 1.0 - d / v.ratio) if len(scores) >= MIN_PAIRS else SMALL_TABLE
    threshold = auto if v.threshold == "auto" else float(v.threshold)
    share = float((scores >= threshold).mean())
    out.update({"ncc_quantiles": {q: round(float(np.quantile(scores, q)), 4) for q in (0.5, 0.99, 0.999, 1.0)},
                "distance_0.1%": round(d, 4), "auto": round(auto, 4), "threshold": round(threshold, 4),
                "accepted_share": round(share, 6), "warned": share > v.max_random_share})  # fmt: skip
    if out["warned"]:
        log.warning("dedup: the near-duplicate threshold NCC >= %.4f accepts %.2f %% of random pairs of this table "
                    "(%d pairs of %d sampled images; median %.3f, 99.9th percentile %.3f): distinct images would be "
                    "grouped. Set dedup.near.verify.threshold: auto (here %.4f) or a higher value", threshold,
                    100 * share, len(scores), n, out["ncc_quantiles"][0.5], out["ncc_quantiles"][0.999], auto)  # fmt: skip
    return out


def phash_check(hashes: list[str], hamming: int, max_share: float) -> dict[str, Any]:
    """The same self-check for the pHash radius: the share of random pairs within ``hamming`` bits."""
    h = np.array([int(x, 16) for x in hashes], dtype=np.uint64)
    if len(h) < 2:
        return {"random_pairs": 0, "accepted_share": 0.0}
    iu = np.triu_indices(len(h), 1)
    bits = np.unpackbits((h[iu[0]] ^ h[iu[1]]).view(np.uint8).reshape(-1, 8), axis=1).sum(1)
    share = float((bits <= hamming).mean())
    out = {"random_pairs": int(len(bits)), "hamming": hamming, "accepted_share": round(share, 6),
           "bits_0.1%": float(np.quantile(bits, RANDOM_QUANTILE)), "warned": share > max_share}  # fmt: skip
    if out["warned"]:
        log.warning("dedup: dedup.near.hamming %d accepts %.2f %% of random pairs of this table (%d pairs; the closest "
                    "0.1 %% are %.0f bits apart): distinct images would be grouped. Lower it, or use "
                    "dedup.near.verify.measure: ncc", hamming, 100 * share, len(bits), out["bits_0.1%"])  # fmt: skip
    return out


def describe(check: dict[str, Any]) -> str:
    """One line for the console and the run report: the threshold, where it came from and what it accepts."""
    if "threshold" not in check:  # the pHash-only path
        p = check.get("phash", {})
        return (f"near duplicates by pHash <= {p.get('hamming')} bits, which accepts "
                f"{100 * p.get('accepted_share', 0):.3f} % of {p.get('random_pairs', 0):,} random pairs")
    how = ("every pair compared" if check.get("exhaustive") else "pairs sharing a bucket compared")
    d, pairs = check.get("distance_0.1%", 0.0), f"{check['random_pairs']:,}"
    if check.get("mode") == "configured":
        source = f"configured; the closest 0.1 % of {pairs} random pairs are at 1 - NCC = {d:.4f}"
    elif check["random_pairs"] < MIN_PAIRS:
        source = f"auto: {check['random_pairs']} random pairs are too few to calibrate on"
    else:
        source = f"auto: {check.get('ratio', 9):g}x closer than the closest 0.1 % of {pairs} random pairs, at 1 - NCC = {d:.4f}"
    line = (f"near duplicates by NCC >= {check['threshold']:.4f} ({source}), "
            f"which accepts {100 * check['accepted_share']:.3f} % of them; {check.get('images', 0):,} images, {how}, "
            f"{check.get('verified_pairs', 0):,} verified pairs, {check.get('detached', 0):,} left alone after "
            f"the anchor check")
    return line + (" — WARNING: the threshold accepts too many random pairs" if check.get("warned") else "")


# ------------------------------------------------------------------ on Spark

EDGE_SCHEMA = T.StructType([T.StructField("src", T.StringType()), T.StructField("dst", T.StringType()),
                            T.StructField("score", T.FloatType())])  # fmt: skip


def _bucket_pairs(threshold: float, shift: int):
    def verify(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(ID, kind="stable").reset_index(drop=True)
        if len(pdf) < 2:  # typed, not an untyped empty frame: Arrow cannot convert that one
            none = np.array([], dtype=object)
            return pd.DataFrame({"src": none, "dst": none, "score": np.array([], dtype=np.float32)})
        scores = all_pairs(decode(pdf[THUMBS].tolist()), shift)
        i, j = np.nonzero(np.triu(scores >= threshold, 1))
        ids = pdf[ID].to_numpy()
        return pd.DataFrame({"src": ids[i], "dst": ids[j], "score": scores[i, j].astype(np.float32)})

    return verify


def embed(px: np.ndarray) -> np.ndarray:
    """(n, 64 + 28): the thumbnails pooled to 8 x 8 and the magnitudes of their lowest 2-D frequencies (which a
    shift leaves unchanged), each part centred where it applies and scaled to unit norm: what the bucketing
    projections read."""
    n, b = len(px), THUMB // POOL
    pooled = px.reshape(n, POOL, b, POOL, b).mean(axis=(2, 4)).reshape(n, -1)
    pooled -= pooled.mean(axis=1, keepdims=True)
    spectrum = np.abs(np.fft.rfft2(px - px.mean(axis=(1, 2), keepdims=True)))
    low = spectrum[:, np.r_[0:4, THUMB - 3 : THUMB]][:, :, :4].reshape(n, -1)
    parts = [p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-6) for p in (pooled, low)]
    return np.concatenate(parts, axis=1)


def _projections(tables: int, seed: int):
    directions = np.random.default_rng(seed).standard_normal((POOL * POOL + 28, tables)).astype(np.float32)

    def project(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            p = embed(decode(pdf[THUMBS].tolist())) @ directions
            yield pdf.assign(**{f"_p{t}": p[:, t].astype(np.float64) for t in range(tables)})

    return project


def verified_edges(reps: DataFrame, n: int, v: VerifyConfig, threshold: float, seed: int) -> DataFrame:
    """(src < dst, score): the pairs of ``reps`` (sample_id, image_thumb) whose NCC reaches ``threshold``, every
    pair compared when ``n`` <= bucket_rows, else every pair sharing a bucket of one of the projections."""
    verify = _bucket_pairs(threshold, v.max_shift)
    if n <= v.bucket_rows:
        return reps.withColumn("_bucket", F.lit(0)).groupBy("_bucket").applyInPandas(verify, EDGE_SCHEMA)
    schema = T.StructType(reps.schema.fields + [T.StructField(f"_p{t}", T.DoubleType()) for t in range(v.tables)])
    projected = reps.mapInPandas(_projections(v.tables, seed), schema)
    buckets = max(2, -(-n // v.bucket_rows))
    cuts = [i / buckets for i in range(1, buckets)]
    bounds = projected.approxQuantile([f"_p{t}" for t in range(v.tables)], cuts, 0.001)
    parts = []
    for t in range(v.tables):
        bucket = F.lit(0)
        for b in bounds[t]:
            bucket = bucket + (F.col(f"_p{t}") > F.lit(b)).cast("int")
        parts.append(projected.select(F.lit(t).alias("_table"), bucket.alias("_bucket"), ID, THUMBS))
    rows = parts[0]
    for p in parts[1:]:
        rows = rows.unionByName(p)
    edges = rows.groupBy("_table", "_bucket").applyInPandas(verify, EDGE_SCHEMA)
    return edges.groupBy("src", "dst").agg(F.max("score").alias("score"))


def _scored(pairs: DataFrame, thumbs: DataFrame, shift: int) -> DataFrame:
    """``pairs`` (node, anchor) with ``score``: their NCC, computed on the executors."""
    a = thumbs.select(F.col(ID).alias("node"), F.col(THUMBS).alias("_ta"))
    b = thumbs.select(F.col(ID).alias("anchor"), F.col(THUMBS).alias("_tb"))
    joined = pairs.join(a, "node").join(b, "anchor").select("node", "anchor", "_ta", "_tb")
    schema = T.StructType([T.StructField("node", T.StringType()), T.StructField("anchor", T.StringType()),
                           T.StructField("score", T.FloatType())])  # fmt: skip

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            s = pair_scores(decode(pdf["_ta"].tolist()), decode(pdf["_tb"].tolist()), shift) if len(pdf) else []
            yield pd.DataFrame({"node": pdf["node"], "anchor": pdf["anchor"], "score": np.asarray(s, np.float32)})

    return joined.mapInPandas(score, schema)


def anchored_groups(edges: DataFrame, thumbs: DataFrame, threshold: float, shift: int,
                    components) -> tuple[DataFrame, dict[str, int]]:  # fmt: skip
    """(node, component) for the nodes of verified ``edges`` whose NCC with their component's anchor (its
    smallest id) reaches ``threshold``; members that do not are grouped again among themselves (``ROUNDS``
    times), and left alone after that. ``components``: the connected-components function (dedup's)."""
    stats = {"rounds": 0, "detached": 0}
    kept = []
    current = edges.select("src", "dst")
    for _ in range(ROUNDS):
        if current.isEmpty():
            break
        stats["rounds"] += 1
        comp = components(current).localCheckpoint()
        members = comp.where(F.col("node") != F.col("component")).select("node", F.col("component").alias("anchor"))
        scored = _scored(members, thumbs, shift).localCheckpoint()
        ok = scored.where(F.col("score") >= threshold).select("node", F.col("anchor").alias("component"))
        loose = scored.where(F.col("score") < threshold).select("node")
        anchors = comp.where(F.col("node") == F.col("component")).select("node", "component")
        good = ok.unionByName(anchors.join(ok.select(F.col("component").alias("node")).distinct(), "node", "left_semi"))
        kept.append(good.localCheckpoint())
        stats["detached"] = loose.count()
        if not stats["detached"]:
            break
        left = loose.select(F.col("node").alias("src"))
        current = (current.join(left, "src", "left_semi")
                   .join(left.select(F.col("src").alias("dst")), "dst", "left_semi").select("src", "dst"))  # fmt: skip
    if not kept:
        return edges.sparkSession.createDataFrame([], "node string, component string"), stats
    out = kept[0]
    for k in kept[1:]:
        out = out.unionByName(k)
    return out, stats
