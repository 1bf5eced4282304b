"""Ranks within large groups without a window over the whole group.

A window partitioned by a class alone (``Window.partitionBy(label)``) runs each class in
one task: at a billion rows, the majority class sorts on one executor. ``rank_within``
gives the same ranks from many small windows: the caller names a ``bucket`` (a long that
never decreases along the order, e.g. a hash's top bits or a quantised score), each
(group, bucket) is ranked on its own, and a bucket's offset is the count of the buckets
before it, from a table of (group, bucket) counts.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

HASH_RANGE_SHIFT = 54  # a 64-bit hash's top 10 bits: 1,024 ordered ranges


def hash_bucket(h: Column) -> Column:
    """The top 10 bits of a 64-bit hash: ranges that keep the hash's order."""
    return F.shiftright(h, HASH_RANGE_SHIFT)


def rank_within(df: DataFrame, keys: list[str], bucket: Column, order: list[Column], *,
                limit: Column | None = None) -> DataFrame:  # fmt: skip
    """``df`` plus ``_rank`` (1-based): the row's rank within ``keys`` by ``(bucket, *order)``, exactly as
    ``row_number()`` over one window would give. With ``limit`` (a column of ``df``, constant per group),
    only rows ranked at most ``limit`` are returned, and buckets wholly past it are never ranked."""
    df = df.withColumn("_bucket", bucket)
    before = Window.partitionBy(*keys).orderBy("_bucket").rowsBetween(Window.unboundedPreceding, -1)
    offsets = (df.groupBy(*keys, "_bucket").agg(F.count(F.lit(1)).alias("_n"))
               .withColumn("_offset", F.coalesce(F.sum("_n").over(before), F.lit(0))).drop("_n"))  # fmt: skip
    df = df.join(offsets, [*keys, "_bucket"])
    if limit is not None:
        df = df.where(F.col("_offset") < limit)
    local = Window.partitionBy(*keys, "_bucket").orderBy(*order)
    ranked = df.withColumn("_rank", F.col("_offset") + F.row_number().over(local)).drop("_bucket", "_offset")
    return ranked.where(F.col("_rank") <= limit) if limit is not None else ranked
