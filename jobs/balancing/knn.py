"""Distributed k nearest neighbours on Spark, for SMOTE, ADASYN and SMOTE-NC.

No group of rows is ever collected to the driver. Rows are cut into buckets by random
projections, and the exact k-NN is computed inside each bucket:

1. each row's standardised vector is projected onto ``tables`` seeded random
   directions;
2. per group (e.g. one fold's training part of one class) and per projection, the
   approximate quantiles of the projection cut the group into buckets of about
   ``bucket_rows`` rows, so that rows near each other along that direction share a
   bucket;
3. a vectorised Arrow UDF (``applyInArrow``) computes exact squared distances inside
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
CHUNK = 4_000_000  # query rows × bucket rows evaluated at once (one BLAS product)


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
    found = rows.groupBy(*group, "_table", "_bucket").applyInArrow(udf, out_schema)
    if tables == 1 or buckets_max == 1:
        return found
    merged = found.groupBy(*group, ID).agg(F.flatten(F.collect_list("neighbours")).alias("_all"))
    nearest = F.slice(F.array_sort(F.array_distinct("_all")), 1, k)
    return merged.select(*group, ID, nearest.alias("neighbours"))


def _bucket_knn(group, vector, k, categories, mismatch, carry, query):
    """The UDF: one bucket in, its query rows with their neighbours out, built as Arrow arrays (no Python
    objects per row: a list<struct> of carried arrays is gathered with ``take``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def knn(table: pa.Table) -> pa.Table:
        table = table.take(pc.sort_indices(table, sort_keys=[(ID, "ascending")]))
        n = table.num_rows
        vec = table.column(vector).combine_chunks()
        d = len(vec[0]) if n and vec[0].is_valid else 0
        x = vec.flatten().to_numpy(zero_copy_only=False).reshape(n, d).astype(np.float64) if n else np.zeros((0, 0))
        codes = None
        if categories and n:
            cats = table.column(categories).combine_chunks()
            width = len(cats[0])
            if width:
                flat = np.asarray(cats.flatten().to_pylist(), dtype=object).reshape(n, width)
                codes = np.stack([pd.factorize(flat[:, j])[0] for j in range(width)], axis=1)
        sq = (x * x).sum(1)
        asked = np.flatnonzero(table.column(query).to_numpy(zero_copy_only=False)) if query else np.arange(n)
        kk = max(0, min(k, n - 1))
        near = np.zeros((len(asked), kk), dtype=np.int64)
        dist = np.zeros((len(asked), kk))
        step = max(1, CHUNK // max(1, n))
        for start in range(0, len(asked), step) if kk else ():
            q = asked[start : start + step]
            d2 = np.maximum(sq[q, None] + sq[None, :] - 2.0 * (x[q] @ x.T), 0.0) if d else np.zeros((len(q), n))
            if codes is not None:
                d2 = d2 + mismatch * (codes[q, None, :] != codes[None, :, :]).sum(-1)
            d2[np.arange(len(q)), q] = np.inf  # not its own neighbour
            part = np.argpartition(d2, kk - 1, axis=1)[:, :kk] if kk < n else np.argsort(d2, axis=1)[:, :kk]
            part_d = np.take_along_axis(d2, part, axis=1)
            order = np.lexsort((part, part_d), axis=1)  # by distance, then by sample_id order
            near[start : start + len(q)] = np.take_along_axis(part, order, axis=1)
            dist[start : start + len(q)] = np.take_along_axis(part_d, order, axis=1)
        flat = pa.array(near.reshape(-1))
        fields = [pa.array(dist.reshape(-1)), table.column(ID).take(flat)]
        fields += [table.column(c).take(flat) for c in carry]
        items = pa.StructArray.from_arrays([f.combine_chunks() if isinstance(f, pa.ChunkedArray) else f
                                            for f in fields], names=["d2", ID, *carry])  # fmt: skip
        lists = pa.ListArray.from_arrays(pa.array(np.arange(len(asked) + 1) * kk, pa.int32()), items)
        out = table.take(pa.array(asked, pa.int64())).select([*group, ID])
        return out.append_column("neighbours", lists)

    return knn
