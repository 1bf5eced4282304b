"""Dedup, as two verbs: ``find`` gives every row a ``dup_group``; ``remove`` keeps one survivor per group.

Exact duplicates share a hash of the normalised feature values (tabular) or of the file
content (images). Near duplicates are found without comparing all pairs:

- tabular: grid LSH ("rounding keys" at random offsets): each of several grids rounds
  every feature to cells a few tolerances wide at a seeded offset, and rows sharing a
  grid's key are candidates, each confirmed by checking every feature is within
  tolerance (see ``tabular_near_edges`` for the recall bound);
- images (``dedup.near.verify.measure: ncc``, the default): every pair of thumbnails in a
  bucket compared by normalised cross-correlation over small shifts, with a threshold this
  table calibrates, and groups anchored on their survivor (``near_images``);
- images, ``measure: phash``: the 64-bit perceptual hash from the probe is cut into 8 bands
  (16 for a threshold above 7 bits); pairs sharing a band are candidates (by pigeonhole,
  every pair within the threshold shares one), confirmed by their Hamming distance.

Pairs become groups by connected components, computed in Spark by alternating
Large-Star / Small-Star rounds (no pair list is collected to the driver); a group's id is its smallest
``sample_id``. Exact copies whose labels disagree follow ``dedup.conflicts``; a near group keeps one
survivor per label (``dedup.near.conflicts: per_label``); otherwise the survivor is the smallest
``sample_id``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import PipelineConfig
from jobs.curation import near_images
from jobs.errors import ConfigError
from jobs.stage import StageReport, StageResult

log = logging.getLogger(__name__)

STAGE = "dedup"
ID = "sample_id"
REASONS = ("exact_duplicate", "near_duplicate", "label_conflict")  # why dedup removes a row
MAX_ITERATIONS = 200  # O(log² n) rounds: never reached by a real group


def _normalised(cfg: PipelineConfig) -> list[F.Column]:
    """Each feature's value as compared: categoricals case/space-folded, numbers as doubles; as strings."""
    values = []
    for f in cfg.columns.features:
        c = F.col(f"`{f.name}`")
        values.append(F.lower(F.trim(c.cast("string"))) if f.kind == "categorical" else c.cast("double"))
    return [v.cast("string") for v in values]


def exact_key(df: DataFrame, cfg: PipelineConfig, columns: list[str] | None = None) -> DataFrame:
    """``exact_key``: SHA-256 of the file content (images), of the normalised feature values (tabular), or, with
    ``columns``, of those columns' values (the identity columns; with the features: content plus id)."""
    if cfg.kind == "images":
        return df.withColumn("exact_key", F.col("image_sha256"))
    values = [F.col(f"`{c}`").cast("string") for c in columns] if columns else _normalised(cfg)
    return df.withColumn("exact_key", F.sha2(F.to_json(F.array(*values)), 256))


CHANCE_SHARE = 0.1  # chance may explain more than this share of the observed duplicate pairs: not evidence


@dataclass
class Plan:
    """How duplicates are found for this table: the exact key's columns (None: the features), whether the
    tabular near search runs, and the chance-collision figures behind that choice."""

    key_columns: list[str] | None = None
    exact: bool = True
    near: bool = True
    chance: dict[str, Any] = field(default_factory=dict)
    near_check: dict[str, Any] = field(default_factory=dict)  # images: the threshold's self-check and the groups


def chance_collisions(df: DataFrame, cfg: PipelineConfig) -> dict[str, Any]:
    """Pairs of rows that share every feature value: observed, and expected by chance were the features
    independent — C(n, 2) × Π_f P(two rows agree on f), each P from the feature's own value counts
    (Σ c_v (c_v − 1) / (n (n − 1))). Two Spark jobs. Correlated features collide more often than this, so it
    errs on the side of treating collisions as evidence (the behaviour before the check)."""
    values = _normalised(cfg)
    cells = df.select(F.explode(F.array(*[F.struct(F.lit(i).alias("f"), v.alias("v")) for i, v in enumerate(values)]))
                      .alias("e")).groupBy("e.f", "e.v").count()  # fmt: skip
    per = cells.groupBy("f").agg(F.sum(F.col("count") * (F.col("count") - 1)).alias("same"),
                                 F.sum("count").alias("n")).collect()  # fmt: skip
    observed = (df.groupBy("exact_key").count()
                .agg(F.sum(F.col("count") * (F.col("count") - 1) / 2).alias("pairs")).first()["pairs"] or 0)  # fmt: skip
    n = int(per[0]["n"]) if per else 0
    pairs = n * (n - 1) / 2
    agree = [float(r["same"]) / (n * (n - 1)) if n > 1 else 0.0 for r in per]
    expected = pairs * float(np.prod(agree)) if agree else 0.0
    return {"rows": n, "observed_pairs": int(observed), "expected_pairs": round(expected, 3),
            "agreement_per_feature": {cfg.columns.features[int(r["f"])].name: round(a, 6) for r, a in zip(per, agree, strict=True)},
            "explained": expected >= 1 and expected > CHANCE_SHARE * max(int(observed), 1)}  # fmt: skip


def plan(df: DataFrame, cfg: PipelineConfig) -> Plan:
    """Decide how to find duplicates (see ``Plan``). Identity columns (``dedup.exact.columns``) are the key when
    given. Otherwise, on a table whose features are expected to collide by chance (``chance_collisions``),
    equal features are not evidence: the key becomes the id column plus the features (content plus id), or,
    without an id column, exact dedup is off; the tabular near search is off too; and a warning says so."""
    e = cfg.dedup.exact
    out = Plan(key_columns=list(e.columns) if e.columns else None, exact=e.enabled, near=cfg.dedup.near.enabled)
    if cfg.kind == "images":
        return out
    missing = sorted(set(e.columns or []) - set(df.columns))
    if missing:
        raise ConfigError(f"dedup.exact.columns are not columns of the table: {missing}",
                          fix="name identity columns the source has (e.g. the id column), or drop the key")  # fmt: skip
    if e.chance == "ignore" or not (e.enabled or out.near) or not cfg.columns.features:
        return out
    out.chance = chance_collisions(exact_key(df, cfg), cfg)
    if not out.chance["explained"]:
        return out
    c = out.chance
    if not e.columns:
        out.key_columns = [cfg.columns.id] + [f.name for f in cfg.columns.features] if cfg.columns.id else None
        out.exact = e.enabled and cfg.columns.id is not None
    out.near = False
    log.warning("dedup: distinct rows of this table share every feature value by chance (%.1f pairs expected from "
                "the features' value counts, %d observed), so equal features are not evidence of a copy: %s; the "
                "tabular near-duplicate search is off. Name identity columns in dedup.exact.columns, or set "
                "dedup.exact.chance: ignore to deduplicate on the features anyway", c["expected_pairs"],
                c["observed_pairs"], f"exact duplicates keyed on {cfg.columns.id} plus the features" if out.exact
                else "exact dedup is off (no id column)")  # fmt: skip
    return out


def exact_edges(df: DataFrame) -> DataFrame:
    """Each member of an exact-key group linked to the group's smallest id (a star, not all pairs)."""
    first = F.min(ID).over(Window.partitionBy("exact_key"))
    linked = df.where(F.col("exact_key").isNotNull()).select(ID, first.alias("first"))
    return linked.where(F.col(ID) != F.col("first")).select(F.col("first").alias("src"), F.col(ID).alias("dst"))


def tabular_near_edges(df: DataFrame, cfg: PipelineConfig) -> DataFrame:
    """Confirmed pairs (src < dst) whose every feature is within ``tolerance`` stdevs (grid LSH).

    Each of ``grids`` grids cuts every numeric feature into cells of ``c × tolerance``
    stdevs at a seeded random offset; a row's key in a grid is the hash of its cells (and
    categorical values). A pair within tolerance shares a grid's key unless some feature
    straddles a cell boundary there, which happens with probability at most 1/c per
    feature; with c = max(4, 2 × features), a pair is missed by all grids with probability
    below 0.4^grids. Rows with the same exact key are represented once.
    """
    tol, grids = cfg.dedup.near.tolerance, cfg.dedup.near.grids
    numeric = [f.name for f in cfg.columns.features if f.kind == "numeric"]
    categorical = [f.name for f in cfg.columns.features if f.kind == "categorical"]
    stds = df.agg(*[F.stddev_samp(c).alias(c) for c in numeric]).first().asDict() if numeric else {}
    cells = max(4, 2 * len(numeric))
    offsets = np.random.default_rng(cfg.seed).random((grids, len(numeric)))
    reps = df.groupBy("exact_key").agg(F.min(ID).alias(ID), *[F.first(c).alias(c) for c in numeric + categorical])
    keys = []
    for g in range(grids):
        parts = [F.lit(g)]
        for i, c in enumerate(numeric):
            width = cells * tol * (stds[c] or 0.0)
            parts.append(F.floor(F.col(c) / F.lit(width) + F.lit(float(offsets[g, i]))) if width else F.col(c))
        parts += [F.lower(F.trim(F.col(c).cast("string"))) for c in categorical]
        keys.append(F.xxhash64(*parts))
    blocks = reps.select(ID, *numeric, *categorical, F.posexplode(F.array(*keys)).alias("grid", "key"))
    a, b = blocks.alias("a"), blocks.alias("b")
    close = (
        (F.col("a.grid") == F.col("b.grid"))
        & (F.col("a.key") == F.col("b.key"))
        & (F.col(f"a.{ID}") < F.col(f"b.{ID}"))
    )
    for c in numeric:
        limit = tol * (stds[c] or 0.0) * (1 + 1e-9)
        close = close & (F.abs(F.col(f"a.`{c}`") - F.col(f"b.`{c}`")) <= F.lit(limit))
    for c in categorical:
        close = close & F.col(f"a.`{c}`").eqNullSafe(F.col(f"b.`{c}`"))
    pairs = a.join(b, close).select(F.col(f"a.{ID}").alias("src"), F.col(f"b.{ID}").alias("dst")).distinct()
    return pairs


def _hex_to_long(hexes: str) -> F.Column:
    return F.conv(hexes, 16, 10).cast("long")


def image_near_edges(df: DataFrame, cfg: PipelineConfig) -> DataFrame:
    """Confirmed pairs (src < dst) of perceptual hashes at most ``hamming`` bits apart (LSH banding)."""
    h = cfg.dedup.near.hamming
    bands = 8 if h <= 7 else 16
    chars = 16 // bands
    rows = df.where(F.col("image_phash").isNotNull()).select(ID, "image_phash")
    banded = rows.select(ID, "image_phash", F.posexplode(F.array(*[
        F.substring("image_phash", 1 + i * chars, chars) for i in range(bands)])).alias("band", "value"))  # fmt: skip
    a, b = banded.alias("a"), banded.alias("b")
    cand = (a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
                   & (F.col(f"a.{ID}") < F.col(f"b.{ID}")))
            .select(F.col(f"a.{ID}").alias("src"), F.col(f"b.{ID}").alias("dst"),
                    F.col("a.image_phash").alias("ha"), F.col("b.image_phash").alias("hb"))
            .dropDuplicates(["src", "dst"]))  # fmt: skip
    bits = F.lit(0)
    for half in (1, 9):  # two 32-bit halves: conv to long stays positive
        x = _hex_to_long(F.substring("ha", half, 8)).bitwiseXOR(_hex_to_long(F.substring("hb", half, 8)))
        bits = bits + F.bit_count(x)
    return cand.where(bits <= h).select("src", "dst")


def _large_star(edges: DataFrame) -> DataFrame:
    """Each node links its larger neighbours to the smallest node of its neighbourhood (itself included)."""
    both = edges.union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    least = both.groupBy("src").agg(F.least(F.min("dst"), F.first("src")).alias("m"))
    return (both.join(least, "src").where(F.col("dst") > F.col("src"))
            .select(F.col("dst").alias("src"), F.col("m").alias("dst")).distinct())  # fmt: skip


def _small_star(edges: DataFrame) -> DataFrame:
    """Each node links itself and its smaller neighbours to the smallest of them (edges point large → small)."""
    least = edges.groupBy("src").agg(F.min("dst").alias("m"))
    moved = edges.join(least, "src").select(F.greatest("dst", "m").alias("src"), F.least("dst", "m").alias("dst"))
    return moved.where(F.col("src") != F.col("dst")).union(least.select("src", F.col("m").alias("dst"))).distinct()


def _stars(edges: DataFrame) -> bool:
    """Is every group a star around its smallest node (edges large → small): each node has at most one edge
    out, and no edge ends at a node that has one? Then each edge names its node's component."""
    outs = edges.groupBy("src").agg(F.count(F.lit(1)).alias("n"))
    forked = outs.where(F.col("n") > 1).select("src")
    chained = edges.join(outs.select(F.col("src").alias("dst")), "dst", "left_semi").select(F.col("dst").alias("src"))
    return forked.union(chained).isEmpty()


def connected_components(edges: DataFrame) -> DataFrame:
    """(node, component) for every node of ``edges`` (src, dst); component = the smallest node id.

    Alternating Large-Star and Small-Star (Kiveris et al., 2014, "Connected Components in
    MapReduce and Beyond"): each round is a few joins and aggregations, every group ends as
    a star around its smallest id, and the number of rounds grows with the logarithm of the
    widest group's size (a chain of 10,000 near duplicates takes about 15), where min-label
    propagation needed as many rounds as the group's diameter.
    """
    current = (edges.select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst"))
               .where(F.col("src") != F.col("dst")).distinct().localCheckpoint())  # fmt: skip
    for _ in range(MAX_ITERATIONS):
        if _stars(current):  # exact-duplicate edges arrive as stars already: no round at all
            roots = current.select(F.col("dst").alias("node")).distinct()
            return current.select(F.col("src").alias("node"), F.col("dst").alias("component")).union(
                roots.select("node", F.col("node").alias("component")))  # fmt: skip
        current = _small_star(_large_star(current)).localCheckpoint()
    raise RuntimeError(f"connected components did not converge in {MAX_ITERATIONS} rounds")


def find(df: DataFrame, cfg: PipelineConfig, how: Plan | None = None) -> DataFrame:
    """``df`` with ``exact_key`` and ``dup_group`` (the smallest ``sample_id`` of its duplicate group), found as
    ``how`` says (default: ``plan(df, cfg)``)."""
    how = how or plan(df, cfg)
    df = exact_key(df, cfg, how.key_columns)
    if cfg.kind == "images" and how.near and cfg.dedup.near.verify.measure == "ncc":
        return _find_images(df, cfg, how)
    if cfg.kind == "images" and how.near:  # the pHash-only path checks its radius on random pairs too
        v = cfg.dedup.near.verify
        sample = (df.where(F.col("image_phash").isNotNull()).orderBy(F.xxhash64(F.lit(cfg.seed), ID))
                  .limit(v.sample).select("image_phash").collect())  # fmt: skip
        how.near_check = {"phash": near_images.phash_check([r[0] for r in sample], cfg.dedup.near.hamming,
                                                           v.max_random_share)}  # fmt: skip
    parts = []
    if how.exact:
        parts.append(exact_edges(df))
    if how.near:
        parts.append(image_near_edges(df, cfg) if cfg.kind == "images" else tabular_near_edges(df, cfg))
    if not parts:
        return df.withColumn("dup_group", F.col(ID))
    edges = parts[0]
    for p in parts[1:]:
        edges = edges.union(p)
    groups = connected_components(edges)
    found = df.join(groups, df[ID] == groups["node"], "left")
    return found.withColumn("dup_group", F.coalesce("component", ID)).drop("node", "component")


def _find_images(df: DataFrame, cfg: PipelineConfig, how: Plan) -> DataFrame:
    """Images, measured by NCC: each exact copy set is represented by its smallest id; representatives are
    grouped by ``near_images`` (verified pairs, anchored groups); every row takes its representative's group.
    The self-check's figures and the group statistics go to ``how.near_check``."""
    v = cfg.dedup.near.verify
    thumbs = near_images.THUMBS
    if thumbs not in df.columns:
        raise ValueError("image near-duplicate verification needs the probe's thumbnails (probe_images(thumbnails=True))")
    first = F.min(ID).over(Window.partitionBy("exact_key"))
    rep = F.when(F.col("exact_key").isNotNull(), first).otherwise(F.col(ID)) if how.exact else F.col(ID)
    df = df.withColumn("_rep", rep)
    reps = df.where((F.col(ID) == F.col("_rep")) & F.col(thumbs).isNotNull()).select(ID, thumbs, "image_phash")
    clock = time.perf_counter()
    reps = reps.localCheckpoint()
    n = reps.count()
    sample = reps.orderBy(F.xxhash64(F.lit(cfg.seed), ID)).limit(v.sample).collect()
    check = near_images.calibrate(near_images.decode([r[thumbs] for r in sample]), v)
    check["phash"] = near_images.phash_check([r["image_phash"] for r in sample], cfg.dedup.near.hamming, 1.0)
    check["images"] = n
    check["exhaustive"] = n <= v.bucket_rows
    seconds = {"calibrate": time.perf_counter() - clock}
    clock = time.perf_counter()
    edges = near_images.verified_edges(reps.select(ID, thumbs), n, v, check["threshold"], cfg.seed).localCheckpoint()
    check["verified_pairs"] = edges.count()
    seconds["compare"] = time.perf_counter() - clock
    clock = time.perf_counter()
    groups, stats = near_images.anchored_groups(edges, reps.select(ID, thumbs), check["threshold"], v.max_shift,
                                                connected_components)  # fmt: skip
    groups = groups.localCheckpoint()
    seconds["group"] = time.perf_counter() - clock
    check.update({**stats, "seconds": {k: round(x, 2) for k, x in seconds.items()}})
    how.near_check = check
    log.info("dedup: near duplicates by NCC >= %.4f (%s; %d images, %s), %d verified pairs", check["threshold"],
             "auto" if v.threshold == "auto" else "configured", n,
             "every pair compared" if check["exhaustive"] else f"buckets of {v.bucket_rows} x {v.tables} projections",
             check["verified_pairs"])  # fmt: skip
    found = df.join(groups.withColumnRenamed("node", "_rep"), "_rep", "left")
    return found.withColumn("dup_group", F.coalesce("component", "_rep")).drop("_rep", "component")


def remove(found: DataFrame, cfg: PipelineConfig, how: Plan | None = None) -> StageResult:
    """Keep one survivor per group; quarantine the rest (exact/near duplicate). Exact copies whose labels
    disagree follow ``dedup.conflicts``: ``quarantine`` (all of them, ``label_conflict``), ``majority`` (the
    survivor is the commonest label's smallest id, the other labels' rows are ``label_conflict``; a tie is
    quarantined whole) or ``keep`` (one survivor per label). A near group keeps one survivor per label
    (``dedup.near.conflicts: per_label``), or is judged whole like exact copies (``group``)."""
    start = time.perf_counter()
    label = cfg.columns.label
    policy = cfg.dedup.conflicts
    per_label_near = cfg.dedup.near.conflicts == "per_label"
    # Where labels are judged: each exact copy set (a near group keeps one survivor per label), or the group.
    judged = ["dup_group", "exact_key"] if per_label_near else ["dup_group"]
    group = Window.partitionBy(*judged)
    # The unit a survivor is chosen in: the group, or (keeping near copies) each exact copy set in it; with
    # conflicts kept, or near groups judged per label, each label within that.
    unit = ["dup_group"] + (["exact_key"] if cfg.dedup.near.action == "keep" else [])
    unit += [label] if policy == "keep" or per_label_near else []
    per_label = Window.partitionBy(*judged, label)
    df = (found.withColumn("group_size", F.count(F.lit(1)).over(Window.partitionBy("dup_group")))
          .withColumn("labels", F.size(F.collect_set(label).over(group)))
          .withColumn("label_rows", F.count(F.lit(1)).over(per_label))
          .withColumn("top_rows", F.max("label_rows").over(group)))  # fmt: skip
    top_labels = F.size(F.collect_set(F.when(F.col("label_rows") == F.col("top_rows"), F.col(label))).over(group))
    df = df.withColumn("top_labels", top_labels)
    if policy == "quarantine":
        conflict = F.col("labels") > 1
    elif policy == "majority":  # the rows of other labels, or every row when the commonest labels tie
        conflict = (F.col("labels") > 1) & ((F.col("top_labels") > 1) | (F.col("label_rows") < F.col("top_rows")))
    else:
        conflict = F.lit(False)
    eligible = Window.partitionBy(*unit)
    df = df.withColumn("conflict", conflict)
    df = (df.withColumn("survivor", F.min(F.when(~F.col("conflict"), F.col(ID))).over(eligible))
          .withColumn("survivor_key", F.min(F.when(F.col(ID) == F.col("survivor"), F.col("exact_key"))).over(eligible)))  # fmt: skip
    reason = (F.when(F.col("conflict"), F.lit("label_conflict"))
              .when(F.col(ID) == F.col("survivor"), F.lit(None))
              .when(F.col("exact_key") == F.col("survivor_key"), F.lit("exact_duplicate"))
              .otherwise(F.lit("near_duplicate")))  # fmt: skip
    df = df.withColumn("reason", reason)
    # One job for the counts (the windows above are not cached: each action would compute them again).
    in_group = F.col("group_size") > 1
    stats = df.agg(F.count(F.lit(1)).alias("rows_in"),
                   *[F.count(F.when(F.col("reason") == r, 1)).alias(r) for r in REASONS],
                   F.count_distinct(F.when(in_group, F.col("dup_group"))).alias("g"),
                   F.count(F.when(in_group, 1)).alias("rows")).first()  # fmt: skip
    groups, rows_in = stats, stats["rows_in"]
    dropped = {r: stats[r] for r in REASONS if stats[r]}
    helper = ["group_size", "labels", "label_rows", "top_rows", "top_labels", "conflict", "survivor", "survivor_key"]
    kept = df.where(F.col("reason").isNull()).drop("reason", *helper)
    rejected = (df.where(F.col("reason").isNotNull())
                .withColumn("duplicate_of", F.when(F.col("reason") != "label_conflict", F.col("survivor")))
                .withColumn("reasons", F.array("reason")).drop(*helper))  # fmt: skip
    report = StageReport(stage=STAGE, rows_in=rows_in, rows_out=rows_in - sum(dropped.values()), dropped=dropped)
    report.details.update({"groups": groups["g"], "rows_in_groups": groups["rows"],
                           "near_action": cfg.dedup.near.action, "conflicts": policy,
                           "near_conflicts": cfg.dedup.near.conflicts})  # fmt: skip
    if how is not None:
        report.details.update({"key": how.key_columns or "features", "exact": how.exact, "near": how.near,
                               **({"chance": how.chance} if how.chance else {}),
                               **({"near_check": how.near_check} if how.near_check else {})})  # fmt: skip
    report.seconds = time.perf_counter() - start
    return StageResult(kept=kept, rejected=rejected, report=report)
