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

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import PipelineConfig
from jobs.stage import StageReport, StageResult

STAGE = "split"


RANGE_SHIFT = 54  # the hash's top 10 bits: 1,024 ordered ranges per class


def assign_folds(groups: DataFrame, seed: int, k: int, test: float) -> DataFrame:
    """(dup_group, _class) → (dup_group, fold): each class's groups ranked by a seeded hash.

    The rank is that of one window over the whole class, computed without one: a window
    partitioned by class alone is one task per class, which at a billion rows sorts the
    majority class on one executor. The hash's top bits cut each class into 1,024 ranges
    that keep the hash order; each range is ranked on its own (1,024 tasks per class), and
    a range's offset comes from the counts of the ranges before it (a table of at most
    classes × 1,024 rows). The result is exactly the single window's.
    """
    h = F.xxhash64(F.lit(seed), "dup_group")
    groups = groups.withColumn("_h", h).withColumn("_r", F.shiftright(h, RANGE_SHIFT))
    local = Window.partitionBy("_class", "_r").orderBy("_h", "dup_group")
    ranked = groups.withColumn("_local", F.row_number().over(local) - 1)
    before = Window.partitionBy("_class").orderBy("_r").rowsBetween(Window.unboundedPreceding, -1)
    offsets = (groups.groupBy("_class", "_r").agg(F.count(F.lit(1)).alias("_n"))
               .withColumn("_offset", F.coalesce(F.sum("_n").over(before), F.lit(0)))
               .withColumn("_test", F.round(F.sum("_n").over(Window.partitionBy("_class")) * F.lit(test)).cast("long"))
               .drop("_n"))  # fmt: skip
    ranked = ranked.join(F.broadcast(offsets), ["_class", "_r"]).withColumn("_rank", F.col("_offset") + F.col("_local"))
    fold = F.when(F.col("_rank") < F.col("_test"), F.lit(-1)).otherwise((F.col("_rank") - F.col("_test")) % k)
    return ranked.select("dup_group", fold.cast("int").alias("fold"))


def split(df: DataFrame, cfg: PipelineConfig) -> StageResult:
    start = time.perf_counter()
    label, k, test = cfg.columns.label, cfg.split.folds, cfg.split.test_fraction
    folds = assign_folds(df.groupBy("dup_group").agg(F.min(label).alias("_class")), cfg.seed, k, test)
    out = df.join(folds, "dup_group")
    counts = out.groupBy("fold", label).count().collect()
    table: dict[str, dict[str, int]] = {}
    for r in counts:
        table.setdefault(str(r[label]), {})[str(r["fold"])] = r["count"]
    n = sum(r["count"] for r in counts)
    report = StageReport(stage=STAGE, rows_in=n, rows_out=n)
    report.details.update({"folds": k, "test_fraction": test, "class_counts_per_fold": table})
    report.seconds = time.perf_counter() - start
    return StageResult(kept=out, rejected=None, report=report)
