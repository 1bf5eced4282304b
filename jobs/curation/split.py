"""Split: stratified, group-aware k-fold assignment, with an optional held-out test part.

Groups are ``dup_group``s, so rows of one duplicate group always share a fold. Within
each class (a group's label), groups are ordered by a seeded hash of their id; the first
``round(test_fraction × groups)`` are held out (``fold = -1``) and the rest are dealt to
folds 0..k-1 in turn. The assignment depends only on the seed and the group ids:
re-running gives the same folds, and with one row per group every fold gets its class's
count to within one row.
"""

from __future__ import annotations

import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.config import PipelineConfig
from jobs.lakehouse.ranks import hash_bucket, rank_within
from jobs.stage import StageReport, StageResult

STAGE = "split"


def assign_folds(groups: DataFrame, seed: int, k: int, test: float) -> DataFrame:
    """(dup_group, _class) → (dup_group, fold): each class's groups ranked by a seeded hash.

    The rank is that of one window over the whole class, computed without one
    (``jobs.lakehouse.ranks.rank_within`` on the hash's top bits), so a majority class of a billion
    rows is not sorted on one executor.
    """
    h = F.xxhash64(F.lit(seed), "dup_group")
    ranked = rank_within(groups.withColumn("_h", h), ["_class"], hash_bucket(F.col("_h")),
                         [F.col("_h"), F.col("dup_group")])  # fmt: skip
    tests = groups.groupBy("_class").agg(F.round(F.count(F.lit(1)) * F.lit(test)).cast("long").alias("_test"))
    rank = F.col("_rank") - 1
    fold = F.when(rank < F.col("_test"), F.lit(-1)).otherwise((rank - F.col("_test")) % k)
    return ranked.join(F.broadcast(tests), "_class").select("dup_group", fold.cast("int").alias("fold"))


def split(df: DataFrame, cfg: PipelineConfig, held: list[DataFrame] | None = None) -> StageResult:
    """``df`` with its folds. With ``held``, the result is persisted before its class counts are taken and
    appended to it (the caller unpersists): the ranking's shuffles then run once, not again for each later
    action on the rows (the class check, the silver write)."""
    start = time.perf_counter()
    label, k, test = cfg.columns.label, cfg.split.folds, cfg.split.test_fraction
    folds = assign_folds(df.groupBy("dup_group").agg(F.min(label).alias("_class")), cfg.seed, k, test)
    out = df.join(folds, "dup_group")
    if held is not None:
        out = out.persist(StorageLevel.MEMORY_AND_DISK)
        held.append(out)
    counts = out.groupBy("fold", label).count().collect()
    table: dict[str, dict[str, int]] = {}
    for r in counts:
        table.setdefault(str(r[label]), {})[str(r["fold"])] = r["count"]
    n = sum(r["count"] for r in counts)
    report = StageReport(stage=STAGE, rows_in=n, rows_out=n)
    report.details.update({"folds": k, "test_fraction": test, "class_counts_per_fold": table})
    report.seconds = time.perf_counter() - start
    return StageResult(kept=out, rejected=None, report=report)
