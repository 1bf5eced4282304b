"""The oversampling engine: one shuffle, one Arrow UDF per bucket that returns the synthetic rows.

``synthesize`` (called by ``oversample.build_gold``) takes every real row of a growing class into
each training part (pool) it belongs to and groups them by (pool, class, cell) — the only shuffle.
Inside the UDF, per bucket, with numpy and faiss (``knn.py``):

1. the numeric features standardised (mean and population std of the (pool, class) group) and the
   categorical ones one-hot, so a mismatch costs ``mismatch`` in squared distance (SMOTE-NC);
2. the k nearest same-class neighbours of the rows that make copies: exact up to
   ``oversample.knn_exact_rows`` candidates, HNSW above;
3. exact copies per source: the bucket's quota (all of the group's ``make`` when the group is one
   bucket) shared by weight (1, or ADASYN's hardness), floors, then one more for the largest
   remainders, ties by a seeded hash;
4. per copy, a neighbour and a gap drawn from a seeded hash of (seed, pool, sample_id, copy):
   ``x + gap · (n − x)``; categorical features take the most frequent value among the k
   neighbours (ties: the smallest);
5. the synthetic rows returned in chunks, so a bucket's output is never held whole.

A group (pool, class) of at most ``oversample.bucket_rows`` rows is one bucket: small and medium
data pay one stage. A larger group is cut into cells by k-means centroids trained on a seeded
sample (faiss); a row is a query in its nearest cell and a candidate in its ``knn_probes`` nearest,
and the group's ``make`` is shared among its cells by their weight (one small aggregation). ADASYN's
weights need neighbours among every class of the pool: a first, equally compact pass (``hardness``)
grouped by (pool, cell). Groups oversampled at random need no neighbours and are cut by hash.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.balancing import knn

CHUNK_ROWS = 65_536  # synthetic rows per returned Arrow batch
SAMPLE_PER_CELL = 64  # rows per centroid in the k-means sample
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed uint64 per input (vectorised, wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = h.astype(np.uint64) + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def exact_copies(quota: int, weights: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Copies per source: ``floor(quota · w / Σw)``, then one more for the largest remainders (ties by hash),
    so they sum to ``quota`` exactly. All weights zero: an even share."""
    n = len(weights)
    if n == 0 or quota <= 0:
        return np.zeros(n, np.int64)
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    if not total > 0:
        w, total = np.ones(n), float(n)
    share = quota * w / total
    base = np.floor(share).astype(np.int64)
    short = int(quota - base.sum())
    if short > 0:
        order = np.lexsort((hashes, -(share - base)))  # largest remainder first, then the hash
        base[order[:short]] += 1
    return base


def share_quota(make: int, weights: dict[int, float]) -> dict[int, int]:
    """A group's ``make`` shared among its cells by weight (largest remainders, then the cell id)."""
    cells = sorted(weights)
    got = exact_copies(make, np.array([weights[c] for c in cells]), np.array(cells, dtype=np.int64))
    return {c: int(n) for c, n in zip(cells, got, strict=True)}


def _mode_positions(codes: np.ndarray) -> np.ndarray:
    """Per row of ``codes`` (q x k, sorted-value codes), the position of its most frequent value (ties: the
    smallest value, then the nearest neighbour)."""
    counts = (codes[:, :, None] == codes[:, None, :]).sum(2)
    score = counts * (codes.max(initial=0) + 2) - codes  # more votes first, then the smaller value
    return np.argmax(score, axis=1)


def _codes(column) -> np.ndarray:
    import pandas as pd

    values = column.to_pandas()
    return pd.factorize(values, sort=True)[0]


def _numbers(column) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = pc.cast(column, pa.float64())
    return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls come back as NaN


def _standardise(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None, rows: np.ndarray) -> np.ndarray:
    if stats is None:
        part = x[rows]
        mean = np.nanmean(part, axis=0) if len(part) else np.zeros(x.shape[1])
        std = np.nanstd(part, axis=0) if len(part) else np.ones(x.shape[1])
        mean, std = np.nan_to_num(mean), np.nan_to_num(std)
    else:
        mean, std = stats
    return (x - mean) / np.where(std > 0, std, 1.0)


def generator(spec: dict):
    """The UDF of the main pass: one bucket's rows in, its synthetic rows out (Arrow batches)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numeric, categorical, out_names = spec["numeric"], spec["categorical"], spec["out"]

    def make(key, batches):
        pool, cls, cell = (k.as_py() for k in key)
        table = pa.Table.from_batches(list(batches))
        table = table.take(pc.sort_indices(table, sort_keys=[("sample_id", "ascending")])).combine_chunks()
        group = spec["groups"][(pool, cls)]
        home = np.flatnonzero(table.column("_home").to_numpy(zero_copy_only=False))
        hashes = table.column("_h").to_numpy().astype(np.int64).view(np.uint64)
        w = table.column("_w").to_numpy(zero_copy_only=False)[home] if group["method"] == "adasyn" else np.ones(len(home))
        quota = spec["quotas"].get((pool, cls, cell), group["make"])
        copies = exact_copies(quota, w, hashes[home])
        sources = np.repeat(home, copies)
        if len(sources) == 0:
            return
        first = np.concatenate([[0], np.cumsum(copies)[:-1]])
        copy_no = np.arange(len(sources)) - np.repeat(first, copies) + 1
        mix = splitmix(hashes[sources] + copy_no.astype(np.uint64) * GOLDEN)
        interpolate = group["method"] != "random"
        if interpolate:
            x = np.column_stack([_numbers(table.column(c)) for c in numeric]) if numeric else np.zeros((len(table), 0))
            codes = np.column_stack([_codes(table.column(c)) for c in categorical]) if categorical else None
            z = _standardise(x, spec["stats"].get((pool, cls)), home)
            vectors = knn.encode(z, codes, spec["mismatch"])
            asked = home[copies > 0]
            near, valid, _ = knn.search(vectors, asked, spec["k"], spec["exact_rows"])
            row_of = np.full(len(table), -1)
            row_of[asked] = np.arange(len(asked))
            count = valid.sum(1)
            r = row_of[sources]
            has = count[r] > 0
            pick = (mix % np.maximum(count[r], 1).astype(np.uint64)).astype(np.int64)
            nb = np.where(has, near[r, pick], sources)
            gap = (mix >> np.uint64(11)).astype(np.float64) * 2.0**-53
            modal = None
            if categorical and near.shape[1] and len(asked):
                rows_q = np.arange(len(asked))
                modal = np.column_stack([near[rows_q, _mode_positions(codes[near, j])] for j in range(len(categorical))])
        for start in range(0, len(sources), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            src = sources[part]
            out = table.take(pa.array(src))
            cols = {name: out.column(name) for name in out.column_names}
            if interpolate:
                h, b, g = has[part], nb[part], gap[part]
                for i, c in enumerate(numeric):
                    a, e = x[src, i], x[b, i]
                    value = np.where(h, a + g * (e - a), a)
                    typ = cols[c].type
                    if pa.types.is_integer(typ):
                        value = np.trunc(value)
                    cols[c] = pa.array(value, mask=np.isnan(value)).cast(typ, safe=False)
                for j, c in enumerate(categorical):
                    chosen = src if modal is None else np.where(h, modal[r[part], j], src)
                    cols[c] = table.column(c).take(pa.array(chosen))
                with_ = table.column("sample_id").take(pa.array(b))
                cols["synthetic_with"] = pc.if_else(pa.array(h), with_, pa.nulls(len(src), pa.string()))
            else:
                cols["synthetic_with"] = pa.nulls(len(src), pa.string())
            cols["_copy"] = pa.array(copy_no[part].astype(np.int32))
            yield pa.RecordBatch.from_arrays([cols[n].combine_chunks() if isinstance(cols[n], pa.ChunkedArray)
                                              else cols[n] for n in out_names], names=out_names)  # fmt: skip

    return _iterating(make)


def _iterating(fn):
    """Mark a grouped Arrow UDF as the iterator form (Spark reads the form from the type hints)."""
    import pyarrow as pa

    fn.__annotations__ = {"key": tuple, "batches": Iterator[pa.RecordBatch], "return": Iterator[pa.RecordBatch]}
    return fn


def hardener(spec: dict):
    """The UDF of ADASYN's pass: one pool's (or cell's) rows of every class in; for the rows of the classes
    ADASYN grows, the share of other classes among their k nearest neighbours in the pool."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numeric, categorical, label = spec["numeric"], spec["categorical"], spec["label"]

    def hard(key, batches):
        pool, _cell = (k.as_py() for k in key)
        table = pa.Table.from_batches(list(batches))
        table = table.take(pc.sort_indices(table, sort_keys=[("sample_id", "ascending")])).combine_chunks()
        home = np.flatnonzero(table.column("_home").to_numpy(zero_copy_only=False))
        asked = home[table.column("_ask").to_numpy(zero_copy_only=False)[home]]
        if len(asked) == 0:
            return
        x = np.column_stack([_numbers(table.column(c)) for c in numeric]) if numeric else np.zeros((len(table), 0))
        codes = np.column_stack([_codes(table.column(c)) for c in categorical]) if categorical else None
        z = _standardise(x, spec["stats"].get((pool,)), home)
        near, valid, _ = knn.search(knn.encode(z, codes, spec["mismatch"]), asked, spec["k"], spec["exact_rows"])
        labels = _codes(table.column(label))
        other = ((labels[near] != labels[asked][:, None]) & valid).sum(1)
        share = other / np.maximum(valid.sum(1), 1)
        yield pa.RecordBatch.from_arrays([pa.array(np.full(len(asked), pool, np.int32)),
                                          table.column("sample_id").take(pa.array(asked)).combine_chunks(),
                                          pa.array(share)], names=["pool", "sample_id", "_w"])  # fmt: skip

    return _iterating(hard)


def group_stats(rows: DataFrame, keys: list[str], numeric: list[str]) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Mean and population std of each numeric feature per group (one aggregation), for cut groups."""
    if not numeric:
        return {}
    aggs = [F.avg(c).alias(f"m{i}") for i, c in enumerate(numeric)]
    aggs += [F.stddev_pop(c).alias(f"s{i}") for i, c in enumerate(numeric)]
    out = {}
    for r in rows.groupBy(*keys).agg(*aggs).collect():
        mean = np.array([r[f"m{i}"] if r[f"m{i}"] is not None else 0.0 for i in range(len(numeric))])
        std = np.array([r[f"s{i}"] if r[f"s{i}"] is not None else 1.0 for i in range(len(numeric))])
        out[tuple(r[k] for k in keys)] = (mean, std)
    return out


def cut_into_cells(rows: DataFrame, keys: list[str], sizes: dict[tuple, int], cfg, numeric: list[str],
                   random_groups: set[tuple]) -> tuple[DataFrame, dict]:  # fmt: skip
    """``rows`` with ``_cell`` and ``_home`` (and rows copied into their other nearest cells as candidates), and
    the standardisation stats of the cut groups. Groups of at most ``bucket_rows`` rows are one cell."""
    import pyarrow as pa

    o = cfg.oversample
    big = {g: n for g, n in sizes.items() if n > o.bucket_rows}
    if not big:
        return rows.withColumn("_cell", F.lit(0)).withColumn("_home", F.lit(True)), {}
    cells = {g: math.ceil(n / o.bucket_rows) for g, n in big.items()}
    stats = group_stats(rows.where(in_groups(keys, big)), keys, numeric)
    centroids = {}
    fractions = {g: min(1.0, SAMPLE_PER_CELL * cells[g] / n) for g, n in big.items()}
    near = [g for g in big if g not in random_groups and numeric]
    if near:
        fraction = max(fractions[g] for g in near)
        sample = rows.where(in_groups(keys, near)).sample(fraction=fraction, seed=cfg.seed).select(*keys, *numeric).collect()
        for g in near:
            mine = np.array([[np.nan if r[c] is None else float(r[c]) for c in numeric] for r in sample
                             if tuple(r[k] for k in keys) == g], dtype=np.float64).reshape(-1, len(numeric))  # fmt: skip
            if len(mine) >= cells[g]:
                z = (mine - stats[g][0]) / np.where(stats[g][1] > 0, stats[g][1], 1.0)
                centroids[g] = knn.train_cells(knn.encode(z), cells[g], cfg.seed)
    probes = o.knn_probes

    def assign(batches):
        for batch in batches:
            key_cols = [batch.column(k).to_pylist() for k in keys]
            groups = list(zip(*key_cols, strict=True))
            n = batch.num_rows
            cell = np.zeros((n, 1), np.int64)
            hashes = batch.column("_h").to_numpy().astype(np.int64).view(np.uint64)
            for g in set(groups) & set(big):
                rows_g = np.flatnonzero([x == g for x in groups])
                if g in centroids:
                    x = np.column_stack([_numbers(batch.column(c)).take(rows_g) for c in numeric])
                    z = (x - stats[g][0]) / np.where(stats[g][1] > 0, stats[g][1], 1.0)
                    found = knn.nearest_cells(knn.encode(z), centroids[g], probes)
                else:  # no features to place it by (or oversampled at random): an even cut by hash
                    found = (splitmix(hashes[rows_g]) % np.uint64(cells[g])).astype(np.int64)[:, None]
                if cell.shape[1] < found.shape[1]:
                    cell = np.hstack([cell, np.full((n, found.shape[1] - cell.shape[1]), -1)])
                cell[rows_g, : found.shape[1]] = found
                cell[rows_g, found.shape[1]:] = -1
            for j in range(cell.shape[1]):
                keep = np.flatnonzero(cell[:, j] >= 0)
                if len(keep) == 0:
                    continue
                part = batch.take(pa.array(keep))
                part = part.append_column("_cell", pa.array(cell[keep, j].astype(np.int32)))
                yield part.append_column("_home", pa.array(np.full(len(keep), j == 0)))

    schema = T.StructType([*rows.schema.fields, T.StructField("_cell", T.IntegerType()),
                           T.StructField("_home", T.BooleanType())])  # fmt: skip
    return rows.mapInArrow(assign, schema), stats


def in_groups(keys: list[str], groups) -> F.Column:
    cond = F.lit(False)
    for g in groups:
        one = F.lit(True)
        for k, v in zip(keys, g, strict=True):
            one = one & (F.col(k) == F.lit(v))
        cond = cond | one
    return cond


def recall_estimate(gold: DataFrame, silver: DataFrame, cfg, folds: int, plan: dict, sample: int = 200) -> dict:
    """recall@k of the neighbours the approximate groups used, against exact neighbours, on a seeded sample.

    A synthetic row's neighbour is drawn uniformly from the k its source was given, so the share of sampled rows
    whose neighbour is among the source's exact k nearest (same pool and class, same distance) estimates recall@k
    without keeping the neighbour lists. The exact k nearest come from one distributed pass over the groups."""
    import pyarrow as pa

    o, label = cfg.oversample, cfg.columns.label
    approx = {(f, c) for f, per in plan.items() for c, p in per.items()
              if p["make"] and p["method"] in ("smote", "adasyn", "smotenc") and p["n"] > o.knn_exact_rows}  # fmt: skip
    exact_groups = sum(1 for per in plan.values() for p in per.values()
                       if p["make"] and p["method"] in ("smote", "adasyn", "smotenc")) - len(approx)  # fmt: skip
    out = {"k": o.k_neighbors, "exact_groups": exact_groups, "approximate_groups": len(approx)}
    if not approx:
        return {**out, "recall_at_k": 1.0 if exact_groups else None, "sampled": 0}
    numeric = [f.name for f in cfg.columns.features if f.kind == "numeric"]
    categorical = [f.name for f in cfg.columns.features if f.kind == "categorical"]
    from jobs.balancing.oversample import pooled

    picked = (gold.where(F.col("synthetic_with").isNotNull())
              .where(in_groups(["synthetic_for", "class_name"], approx))
              .orderBy(F.xxhash64(F.lit(cfg.seed), "sample_id")).limit(sample)
              .select("synthetic_for", "class_name", "synthetic_of", "synthetic_with").collect())  # fmt: skip
    if not picked:
        return {**out, "recall_at_k": None, "sampled": 0}
    groups = sorted({(r["synthetic_for"], r["class_name"]) for r in picked})
    rows = pooled(silver, folds).withColumn(label, F.col(label).cast("string")).where(in_groups(["pool", label], groups))
    stats = group_stats(rows, ["pool", label], numeric)
    ids = {r["synthetic_of"] for r in picked}
    queries = {(r["pool"], r[label], r["sample_id"]): r for r in rows.where(F.col("sample_id").isin(list(ids))).collect()}
    k = o.k_neighbors

    def vec(values: dict, g) -> np.ndarray:
        x = np.array([np.nan if values[c] is None else float(values[c]) for c in numeric], dtype=np.float64)
        mean, std = stats.get(g, (np.zeros(len(numeric)), np.ones(len(numeric))))
        return np.nan_to_num((x - mean) / np.where(std > 0, std, 1.0))

    qs = {g: [(sid, vec(r, g), [r[c] for c in categorical]) for (p, c, sid), r in queries.items() if (p, c) == g]
          for g in groups}  # fmt: skip

    def nearest(batches):
        for batch in batches:
            pools = batch.column("pool").to_numpy(zero_copy_only=False)
            classes = np.array(batch.column(label).to_pylist(), dtype=object)
            for g, mine in qs.items():
                at = np.flatnonzero((pools == g[0]) & (classes == g[1]))
                if not len(at) or not mine:
                    continue
                x = np.column_stack([_numbers(batch.column(c)) for c in numeric]) if numeric else np.zeros((batch.num_rows, 0))
                mean, std = stats.get(g, (np.zeros(len(numeric)), np.ones(len(numeric))))
                z = np.nan_to_num((x[at] - mean) / np.where(std > 0, std, 1.0))
                cats = np.array([batch.column(c).to_pylist() for c in categorical], dtype=object).T.reshape(-1, len(categorical))[at] if categorical else np.zeros((len(at), 0), dtype=object)  # fmt: skip
                sids = np.array(batch.column("sample_id").to_pylist(), dtype=object)[at]
                for sid, q, qc in mine:
                    d2 = ((z - q) ** 2).sum(1) + (cats != np.array(qc, dtype=object)).sum(1) * 1.0
                    d2[sids == sid] = np.inf
                    top = np.argsort(d2, kind="stable")[:k]
                    yield pa.RecordBatch.from_arrays([pa.array([sid] * len(top), pa.string()),
                                                      pa.array([int(g[0])] * len(top), pa.int32()),
                                                      pa.array(sids[top].tolist(), pa.string()),
                                                      pa.array(d2[top], pa.float64())], names=["q", "pool", "c", "d2"])  # fmt: skip

    found = rows.select("pool", label, "sample_id", *numeric, *categorical).mapInArrow(
        nearest, "q string, pool int, c string, d2 double").collect()
    best: dict[tuple, list] = {}
    for r in found:
        best.setdefault((r["pool"], r["q"]), []).append((r["d2"], r["c"]))
    truth = {key: {c for _, c in sorted(v)[:k]} for key, v in best.items()}
    hits = [r["synthetic_with"] in truth.get((r["synthetic_for"], r["synthetic_of"]), set()) for r in picked]
    return {**out, "recall_at_k": float(np.mean(hits)), "sampled": len(hits)}
