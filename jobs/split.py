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


def split(df: DataFrame, cfg: PipelineConfig) -> StageResult:
    start = time.perf_counter()
    label, k, test = cfg.columns.label, cfg.split.folds, cfg.split.test_fraction
    groups = df.groupBy("dup_group").agg(F.min(label).alias("_class"))
    order = Window.partitionBy("_class").orderBy(F.xxhash64(F.lit(cfg.seed), "dup_group"), "dup_group")
    per_class = Window.partitionBy("_class")
    groups = (groups.withColumn("_rank", F.row_number().over(order) - 1)
              .withColumn("_test", F.round(F.count(F.lit(1)).over(per_class) * F.lit(test)).cast("int")))  # fmt: skip
    fold = F.when(F.col("_rank") < F.col("_test"), F.lit(-1)).otherwise((F.col("_rank") - F.col("_test")) % k)
    folds = groups.select("dup_group", fold.cast("int").alias("fold"))
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
