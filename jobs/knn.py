"""Distributed k nearest neighbours on Spark, for SMOTE, ADASYN and SMOTE-NC.

No group of rows is ever collected to the driver. Rows are cut into buckets by random
projections, and the exact k-NN is computed inside each bucket:

1. each row's standardised vector is projected onto ``tables`` seeded random
   directions;
2. per group (e.g. one fold's training part of one class) and per projection, the
   approximate quantiles of the projection cut the group into buckets of about
   ``bucket_rows`` rows, so that rows near each other along that direction share a
   bucket;
3. a vectorised pandas UDF (``applyInPandas``) computes exact squared distances inside
   each bucket with numpy, chunked to bound memory;
4. the candidates of all projections are merged and the k nearest kept.

One projection misses the neighbours that fall across a bucket boundary. A second,
independent projection recovers most of them, because a pair split by one cut is
rarely split by both. With ``bucket_rows`` at least the group size there is one bucket,
and the answer is exact. Ties are broken by ``sample_id``, so the result does not
depend on partitioning.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

ID = "sample_id"
CHUNK = 4_000_000  # query rows × bucket rows × dimensions evaluated at once


def project(vector: str, weights: np.ndarray) -> Column:
    """Dot product of an array<double> column with a constant vector, as a SQL expression."""
    w = F.array(*[F.lit(float(x)) for x in weights])
    return F.aggregate(F.zip_with(F.col(vector), w, lambda a, b: a * b), F.lit(0.0), lambda acc, x: acc + x)


def neighbours(
    df: DataFrame,
    group: list[str],
    vector: str,
    k: int,
    *,
    dim: int,
    largest: int,
    seed: int,
    tables: int = 2,
    bucket_rows: int = 2048,
    categories: str | None = None,
    mismatch: float = 1.0,
    carry: list[str] = (),
    query: str | None = None,
) -> DataFrame:
    """The k nearest other rows of each row, within its ``group``.

    ``df`` holds ``group`` columns, ``sample_id``, ``vector`` (array<double>, already
    scaled), optionally ``categories`` (array<string>: each mismatch adds ``mismatch``
    to the squared distance, as in SMOTE-NC), the ``carry`` columns and an optional
    boolean ``query`` column: only those rows get neighbours, all rows are candidates.
    ``dim`` is the vector's length and ``largest`` the size of the largest group (the
    caller knows both; asking Spark would cost two passes).

    Returns ``group`` + ``sample_id`` + ``neighbours``: an array, nearest first, of
    structs ``(d2, sample_id, *carry)``, at most k long (shorter when the group is).
    """
    d = dim
    buckets_max = max(1, math.ceil(largest / bucket_rows))
    rng = np.random.default_rng(seed)
    cols = [*group, ID, vector] + ([categories] if categories else []) + list(carry)
    if query:
        cols.append(query)
    base = df.select(*dict.fromkeys(cols))
    parts = []
    for t in range(tables if buckets_max > 1 else 1):
        w = rng.standard_normal(d) if d else np.zeros(0)
        rows = base.withColumn("_proj", project(vector, w) if d else F.lit(0.0)).withColumn("_table", F.lit(t))
        if buckets_max > 1:
            grid = min(10_000, 4 * buckets_max)
            cuts = [i / grid for i in range(1, grid)]
            bounds = rows.groupBy(*group).agg(
                F.count(F.lit(1)).alias("_n"), F.percentile_approx("_proj", cuts, 10_000).alias("_bounds")
            )
            rows = rows.join(F.broadcast(bounds), group)
            position = F.size(F.filter("_bounds", lambda b: b < F.col("_proj")))
            nb = F.greatest(F.lit(1), F.ceil(F.col("_n") / F.lit(bucket_rows)))
            rows = rows.withColumn("_bucket", F.least(nb - 1, F.floor(position * nb / F.lit(grid))).cast("int"))
            rows = rows.drop("_n", "_bounds")
        else:
            rows = rows.withColumn("_bucket", F.lit(0))
        parts.append(rows.drop("_proj"))
    rows = parts[0]
    for p in parts[1:]:
        rows = rows.unionByName(p)

    fields = {f.name: f for f in base.schema.fields}
    item = T.StructType(
        [T.StructField("d2", T.DoubleType()), T.StructField(ID, T.StringType())]
        + [T.StructField(c, fields[c].dataType) for c in carry]
    )
    out_schema = T.StructType(
        [fields[g] for g in group]
        + [T.StructField(ID, T.StringType()), T.StructField("neighbours", T.ArrayType(item))]
    )
    udf = _bucket_knn(group, vector, k, categories, mismatch, list(carry), query)
    found = rows.groupBy(*group, "_table", "_bucket").applyInPandas(udf, out_schema)
    if tables == 1 or buckets_max == 1:
        return found
    merged = found.groupBy(*group, ID).agg(F.flatten(F.collect_list("neighbours")).alias("_all"))
    nearest = F.slice(F.array_sort(F.array_distinct("_all")), 1, k)
    return merged.select(*group, ID, nearest.alias("neighbours"))


def _bucket_knn(group, vector, k, categories, mismatch, carry, query):
    def knn(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(ID, kind="stable").reset_index(drop=True)
        n = len(pdf)
        x = np.stack(pdf[vector].to_numpy()).astype(np.float64) if n else np.zeros((0, 0))
        codes = None
        if categories:
            cats = np.stack(pdf[categories].to_numpy()) if n else np.zeros((0, 0))
            codes = np.stack([pd.factorize(cats[:, j])[0] for j in range(cats.shape[1])], axis=1) if cats.size else None
        asked = np.flatnonzero(pdf[query].to_numpy()) if query else np.arange(n)
        kk = min(k, n - 1)
        ids = pdf[ID].to_numpy()
        payload = {c: pdf[c].to_numpy() for c in carry}
        result = []
        step = max(1, CHUNK // max(1, n * max(1, x.shape[1])))
        for start in range(0, len(asked), step):
            q = asked[start : start + step]
            d2 = ((x[q, None, :] - x[None, :, :]) ** 2).sum(-1) if x.shape[1] else np.zeros((len(q), n))
            if codes is not None:
                d2 = d2 + mismatch * (codes[q, None, :] != codes[None, :, :]).sum(-1)
            d2[np.arange(len(q)), q] = np.inf  # not its own neighbour
            if kk <= 0:
                result.extend([] for _ in q)
                continue
            near = np.argpartition(d2, kk - 1, axis=1)[:, :kk] if kk < n else np.argsort(d2, axis=1)[:, :kk]
            for r, row in enumerate(near):
                order = row[np.lexsort((row, d2[r, row]))]  # by distance, then by sample_id order
                result.append([(float(d2[r, j]), ids[j], *(payload[c][j] for c in carry)) for j in order])
        out = pdf.loc[asked, [*group, ID]].reset_index(drop=True)
        out["neighbours"] = result
        return out

    return knn
