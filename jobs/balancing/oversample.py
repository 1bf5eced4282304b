"""Oversample per fold, leak-free: silver → gold (the table the Ray side trains from).

For each fold f (and once more, ``synthetic_for = k``, for the final model) the
synthetic rows are made only from that fold's training part: real rows whose ``fold``
is not f and not -1 (for k: every real row but the test part). So no synthetic row ever
carries information from the rows it will be validated on.

All training parts are handled at once: every real row is repeated into the *pools*
(training parts) it belongs to, and each step below is one distributed pass over the
pools, grouped by (pool, class).

- ``random``: minority rows are resampled with replacement.
- ``smote``: a synthetic row is ``x + gap · (n − x)`` for a row ``x`` and one of its k
  nearest same-class neighbours ``n`` in the same pool, gap uniform in [0, 1).
- ``adasyn``: as smote, but a row makes more synthetic rows the larger the share of
  other classes among its k nearest neighbours in the whole pool.
- ``smotenc``: as smote for numeric features, categorical features take the most
  frequent value among the k neighbours; a categorical mismatch adds 1 to the squared
  distance of the numeric features, which are standardised per (pool, class).
- ``undersample`` (or ``undersample: ratio`` beside any method): larger classes are
  cut, per pool, to at most ``smallest / ratio`` rows. A cut real row stays in gold,
  with the pools it is left out of in ``dropped_for``; it still validates its own fold.

Neighbours are computed distributedly (``jobs/balancing/knn.py``). Counts are exact: a class
needing m rows from n sources gives each source ``floor(m · w_i / Σw)`` copies, and the
largest remainders one more (w = 1, or the ADASYN hardness), ordered by a seeded hash.
A class with fewer than k + 1 rows in a pool falls back to ``random`` with a warning.
Images are always repeated, flagged ``augment`` so that training augments them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import plots
from jobs.balancing import knn
from jobs.config import PipelineConfig
from jobs.errors import ConfigError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.ranks import hash_bucket, rank_within
from jobs.stage import StageReport

log = logging.getLogger(__name__)
STAGE = "oversample"
LINEAGE = [("synthetic_for", "int"), ("synthetic_of", "string"), ("synthetic_with", "string"),
           ("dropped_for", "array<int>")]  # fmt: skip


def class_names(silver: DataFrame, label: str) -> list[str]:
    return sorted(r[0] for r in silver.select(label).distinct().collect())


def plan_pools(counts: dict[int, dict[str, int]], cfg: PipelineConfig, folds: int) -> dict[int, dict[str, dict]]:
    """Per pool (0..folds; ``folds`` is the final model's) and class: rows ``n``, rows ``keep`` after
    undersampling, rows to ``make``, and the ``method`` used (``random`` where too few rows for k-NN)."""
    o = cfg.oversample
    classes = sorted({c for per in counts.values() for c in per})
    method = o.method if o.interpolates and cfg.kind == "tabular" else "random"
    grow = o.method not in ("none", "undersample")
    plan: dict[int, dict[str, dict]] = {}
    for f in range(folds + 1):
        train = {c: sum(per.get(c, 0) for g, per in counts.items() if g != f and g >= 0) for c in classes}
        train = {c: n for c, n in train.items() if n > 0}
        keep = dict(train)
        if o.undersample_ratio and train:
            cap = math.ceil(min(train.values()) / o.undersample_ratio)
            keep = {c: min(n, cap) for c, n in train.items()}
        target = math.ceil(o.target_ratio * max(keep.values(), default=0)) if grow else 0
        plan[f] = {}
        for c, n in train.items():
            make = max(0, target - keep[c])
            how = method if not (method != "random" and make and keep[c] < o.k_neighbors + 1) else "random"
            plan[f][c] = {"n": n, "keep": keep[c], "make": make, "method": how,
                          "fallback": how != method and make > 0}  # fmt: skip
    return plan


def pooled(silver: DataFrame, folds: int) -> DataFrame:
    """Every real non-test row once per training part (pool) it belongs to."""
    pools = F.filter(F.sequence(F.lit(0), F.lit(folds)), lambda p: p != F.col("fold"))
    return silver.where(F.col("fold") >= 0).withColumn("pool", F.explode(pools))


def _plan_frame(spark: SparkSession, plan: dict, label: str) -> DataFrame:
    rows = [(f, c, p["n"], p["keep"], p["make"], p["method"]) for f, per in plan.items() for c, p in per.items()]
    schema = f"pool int, `{label}` string, _n long, _keep long, _make long, _method string"
    return spark.createDataFrame(rows, schema)


def _hash(seed: int, *cols) -> Column:
    return F.xxhash64(F.lit(seed), *cols)


def undersampled(pools: DataFrame, plan_df: DataFrame, label: str, seed: int) -> DataFrame:
    """``sample_id`` → ``dropped_for``: the pools a real row is cut from."""
    cut = pools.join(F.broadcast(plan_df.where("_keep < _n")), ["pool", label])
    cut = cut.withColumn("_h", _hash(seed, F.lit("under"), "pool", "sample_id"))
    cut = rank_within(cut, ["pool", label], hash_bucket(F.col("_h")), [F.col("_h"), F.col("sample_id")])
    cut = cut.where(F.col("_rank") > F.col("_keep"))
    return cut.groupBy("sample_id").agg(F.array_sort(F.collect_list("pool")).alias("dropped_for"))


def _scaled(pools: DataFrame, numeric: list[str], by: list[str]) -> DataFrame:
    """Numeric features standardised with the mean and standard deviation of their ``by`` group, as ``_z``."""
    stats = pools.groupBy(*by).agg(
        *[F.avg(c).alias(f"_m{i}") for i, c in enumerate(numeric)],
        *[F.stddev_pop(c).alias(f"_s{i}") for i, c in enumerate(numeric)],
    )
    z = [(F.col(c) - F.col(f"_m{i}")) / F.when(F.col(f"_s{i}") > 0, F.col(f"_s{i}")).otherwise(1.0)
         for i, c in enumerate(numeric)]  # fmt: skip
    out = pools.join(F.broadcast(stats), by).withColumn("_z", F.array(*[F.coalesce(v, F.lit(0.0)) for v in z]))
    return out.drop(*[f"_m{i}" for i in range(len(numeric))], *[f"_s{i}" for i in range(len(numeric))])


def _item(field: str, i: int):
    """``x -> x.field[i]`` for F.transform (a two-argument lambda would receive the element's index)."""
    return lambda x: F.get(x[field], i)


def _mode(values: Column) -> Column:
    """Most frequent value of an array (ties: the smallest)."""
    counted = F.transform(F.array_distinct(values),
                          lambda v: F.struct((-F.size(F.filter(values, lambda x: x == v))).alias("c"), v.alias("v")))  # fmt: skip
    return F.element_at(F.array_sort(counted), 1)["v"]


def exact_copies(src: DataFrame, keys: list[str], seed: int) -> DataFrame:
    """``_copies`` per source row: the floor of its weighted share of ``_make``, and one more for the
    rows with the largest remainders (remainders in 64 steps, then a seeded hash), so each group
    makes exactly ``_make`` rows. Aggregations and ``rank_within``, not a window over the group."""
    totals = src.groupBy(*keys).agg(F.sum("_w").alias("_wsum"), F.count(F.lit(1)).alias("_rows"))
    src = src.join(totals, keys).withColumn("_w", F.when(F.col("_wsum") > 0, F.col("_w")).otherwise(1.0))
    total = F.when(F.col("_wsum") > 0, F.col("_wsum")).otherwise(F.col("_rows"))
    src = src.withColumn("_share", F.col("_w") / total * F.col("_make")).withColumn("_base", F.floor("_share"))
    short = src.groupBy(*keys).agg((F.first("_make") - F.sum("_base")).alias("_short"))
    src = src.join(short, keys).withColumn("_h", _hash(seed, "pool", "sample_id"))
    step = (63 - F.least(F.floor((F.col("_share") - F.col("_base")) * 64), F.lit(63))).cast("long")
    src = rank_within(src, keys, step * 1024 + hash_bucket(F.col("_h")), [F.col("_h"), F.col("sample_id")])
    copies = F.col("_base") + F.when(F.col("_rank") <= F.col("_short"), 1).otherwise(0)
    return src.withColumn("_copies", copies.cast("int")).drop("_wsum", "_rows", "_short", "_h", "_rank")


def synthesize(silver: DataFrame, cfg: PipelineConfig, folds: int, plan: dict) -> DataFrame | None:
    """Synthetic rows for every pool: silver's columns, features made by the planned method, plus lineage."""
    label, seed, o = cfg.columns.label, cfg.seed, cfg.oversample
    if not any(p["make"] for per in plan.values() for p in per.values()):
        return None
    spark = silver.sparkSession
    numeric = [f.name for f in cfg.columns.features if f.kind == "numeric"] if cfg.kind == "tabular" else []
    categorical = [f.name for f in cfg.columns.features if f.kind == "categorical"] if cfg.kind == "tabular" else []
    plan_df = _plan_frame(spark, plan, label)
    src = pooled(silver, folds).withColumn(label, F.col(label).cast("string"))
    src = src.join(F.broadcast(plan_df.where("_make > 0")), ["pool", label])
    interpolating = {p["method"] for per in plan.values() for p in per.values() if p["make"]} - {"random"}
    weight = F.lit(1.0)
    if "adasyn" in interpolating:
        everyone = _scaled(pooled(silver, folds).withColumn(label, F.col(label).cast("string")), numeric, ["pool"])
        asked = plan_df.where("_make > 0 AND _method = 'adasyn'").select("pool", label, F.lit(True).alias("_ask"))
        everyone = everyone.join(F.broadcast(asked), ["pool", label], "left").fillna(False, ["_ask"])
        largest = max(sum(p["n"] for p in per.values()) for per in plan.values())
        near = knn.neighbours(everyone, ["pool"], "_z", o.k_neighbors, dim=len(numeric), largest=largest,
                              seed=seed, tables=1,
                              bucket_rows=o.bucket_rows, carry=[label], query="_ask")  # fmt: skip
        near = near.join(everyone.select("pool", "sample_id", label), ["pool", "sample_id"])
        other = F.size(F.filter("neighbours", lambda x: x[label] != F.col(label)))
        hard = near.select("pool", "sample_id", (other / F.greatest(F.size("neighbours"), F.lit(1))).alias("_hard"))
        src = src.join(hard, ["pool", "sample_id"], "left")
        weight = F.when(F.col("_method") == "adasyn", F.coalesce("_hard", F.lit(0.0))).otherwise(1.0)
    src = exact_copies(src.withColumn("_w", weight), ["pool", label], seed)
    if interpolating:
        # Candidates: every row of a growing class in its pool; queries: the rows that make copies. The
        # counts are computed once (local checkpoint) and feed both the k-NN and the generation.
        src = src.localCheckpoint(eager=True)
        candidates = src.where(F.col("_method") != "random")
        candidates = _scaled(candidates, numeric, ["pool", label]).withColumn("_ask", F.col("_copies") > 0)
        candidates = candidates.withColumn("_raw", F.array(*[F.col(c).cast("double") for c in numeric]))
        cats = F.array(*[F.col(c).cast("string") for c in categorical]).cast("array<string>")
        candidates = candidates.withColumn("_cats", cats)
        largest = max(p["n"] for per in plan.values() for p in per.values() if p["make"] and p["method"] != "random")
        near = knn.neighbours(candidates, ["pool", label], "_z", o.k_neighbors, dim=len(numeric), largest=largest,
                              seed=seed, tables=o.knn_tables, bucket_rows=o.bucket_rows,
                              categories="_cats" if categorical else None, carry=["_raw", "_cats"], query="_ask")  # fmt: skip
        src = src.where("_copies > 0")
        src = src.join(near.select("pool", "sample_id", "neighbours"), ["pool", "sample_id"], "left")
    else:
        src = src.where("_copies > 0").withColumn("neighbours", F.lit(None))
    made = src.withColumn("_copy", F.explode(F.sequence(F.lit(1), F.col("_copies"))))
    if interpolating:
        count = F.size("neighbours")
        pick = F.when(count > 0, F.element_at("neighbours", (F.pmod(_hash(seed, "pool", "sample_id", "_copy"),
                                                                     count) + 1).cast("int")))  # fmt: skip
        made = made.withColumn("_nb", pick)
        gap = F.pmod(_hash(seed + 1, "pool", "sample_id", "_copy"), F.lit(1 << 24)) / float(1 << 24)
        types = dict(silver.dtypes)
        for i, c in enumerate(numeric):
            value = F.col(c) + gap * (F.get(F.col("_nb._raw"), i) - F.col(c))
            made = made.withColumn(c, F.when(F.col("_nb").isNotNull(), value.cast(types[c])).otherwise(F.col(c)))
        for i, c in enumerate(categorical):
            value = _mode(F.transform("neighbours", _item("_cats", i)))
            made = made.withColumn(c, F.when(F.col("_nb").isNotNull(), value.cast(types[c])).otherwise(F.col(c)))
        made = made.withColumn("synthetic_with", F.col("_nb.sample_id"))
    else:
        made = made.withColumn("synthetic_with", F.lit(None).cast("string"))
    made = made.select(
        *[F.col(c) for c in silver.columns if c not in ("sample_id", label)],
        F.col(label),
        F.col("pool").alias("synthetic_for"),
        F.col("sample_id").alias("synthetic_of"),
        "synthetic_with",
        F.lit(None).cast("array<int>").alias("dropped_for"),
        F.sha2(F.concat_ws("|", "sample_id", "pool", "_copy"), 256).substr(1, 32).alias("sample_id"),
    )
    return made


def build_gold(silver: DataFrame, cfg: PipelineConfig, folds: int) -> tuple[DataFrame, dict]:
    label = cfg.columns.label
    names = class_names(silver, label)
    counts: dict[int, dict[str, int]] = {}
    for r in silver.where(F.col("fold") >= 0).groupBy("fold", label).count().collect():
        counts.setdefault(r["fold"], {})[str(r[label])] = r["count"]
    plan = plan_pools(counts, cfg, folds)
    for f, per in plan.items():
        for c, p in per.items():
            if p["fallback"]:
                log.warning("oversample %s: class %r has %d rows in the training part of %s, fewer than "
                            "k_neighbors + 1 = %d: it is oversampled at random instead of by %s", cfg.dataset, c,
                            p["keep"], f"fold {f}" if f < folds else "the final model", cfg.oversample.k_neighbors + 1,
                            cfg.oversample.method)  # fmt: skip
    real = silver.withColumn(label, F.col(label).cast("string"))
    real = real.select("*", *[F.lit(None).cast(t).alias(c) for c, t in LINEAGE if c != "dropped_for"])
    if any(p["keep"] < p["n"] for per in plan.values() for p in per.values()):
        cut = undersampled(pooled(real, folds), _plan_frame(silver.sparkSession, plan, label), label, cfg.seed)
        real = real.join(cut, "sample_id", "left")
    else:
        real = real.withColumn("dropped_for", F.lit(None).cast("array<int>"))
    fake = synthesize(silver, cfg, folds, plan) if cfg.oversample.method != "none" else None
    rows = real if fake is None else real.unionByName(fake)
    rows = rows.withColumn("augment", F.col("synthetic_for").isNotNull() & F.lit(cfg.kind == "images"))
    index = F.create_map(*[x for i, c in enumerate(names) for x in (F.lit(str(c)), F.lit(i))])
    rows = rows.withColumn("class_name", F.col(label)).withColumn("label", F.element_at(index, F.col(label)))
    if label != "label":
        rows = rows.drop(label)
    if cfg.images and cfg.images.embed:
        from jobs.validation.probe import embed_images

        im = cfg.images
        pixels = embed_images(silver.select("sample_id", im.path_column), im.path_column, cfg.resolve(im.root),
                              im.size, im.channels).select(F.col("sample_id").alias("_src"), "image")  # fmt: skip
        rows = rows.join(pixels, F.coalesce("synthetic_of", "sample_id") == F.col("_src")).drop("_src")
    fallback = [{"pool": f, "class": c, "rows": p["keep"]} for f, per in plan.items() for c, p in per.items()
                if p["fallback"]]  # fmt: skip
    return rows, {"classes": names, "plan": plan, "fallback": fallback}


def gold_properties(cfg: PipelineConfig, run_id: str, folds: int, classes: list[str], silver_version: int) -> dict:
    """The ``fulcrum.*`` table properties of a gold-contract table (what the Ray side reads: ``training.gold``)."""
    features = [{"name": f.name, "kind": f.kind} for f in cfg.columns.features]
    props = {"fulcrum.run_id": run_id, "fulcrum.kind": cfg.kind, "fulcrum.folds": folds,
             "fulcrum.classes": json.dumps(classes), "fulcrum.features": json.dumps(features),
             "fulcrum.silver_version": silver_version, "fulcrum.oversample": cfg.oversample.method,
             "fulcrum.class_weight": "none", "fulcrum.balance": "{}"}  # fmt: skip
    if cfg.images:
        props.update({"fulcrum.image_size": cfg.images.size, "fulcrum.image_channels": cfg.images.channels,
                      "fulcrum.image_column": cfg.images.path_column,
                      "fulcrum.image_root": cfg.resolve(cfg.images.root),
                      "fulcrum.image_embedded": str(cfg.images.embed).lower()})  # fmt: skip
    return props


def write_gold(silver: DataFrame, cfg: PipelineConfig, run_id: str, silver_version: int, folds: int, target: str,
               stage: str = STAGE) -> tuple[int, dict]:  # fmt: skip
    """Silver → a gold-contract table at ``target`` (one overwrite commit with its properties): (version, info)."""
    gold, info = build_gold(silver, cfg, folds)
    props = gold_properties(cfg, run_id, folds, info["classes"], silver_version)
    return tables.overwrite(gold, target, run_id, stage, props), info


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: silver (pinned version) → gold, one overwrite commit with the ``fulcrum.*`` properties."""
    lake = tables.Lake(cfg.lake_dir)
    with ledger.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        start = time.perf_counter()
        version = tables.version(spark, lake.path("silver"))
        if version is None:
            raise ConfigError(f"{cfg.dataset}: silver does not exist yet", fix="run `fulcrum curate CONFIG` first")
        record.inputs.append(("silver", lake.path("silver"), version))
        silver = tables.read(spark, lake.path("silver"), version)
        folds = int(tables.properties(spark, lake.path("silver")).get("fulcrum.folds", cfg.split.folds))
        method, chosen = cfg.oversample.method, None
        if method == "auto":  # measure the candidates on the folds, then gold is the chosen one's rows
            from jobs.balancing import auto

            classes = class_names(silver, cfg.columns.label)
            method, chosen, rows = auto.choose(spark, cfg, run_id, silver, version, folds, classes, record, STAGE)
            props = gold_properties(cfg, run_id, folds, classes, version)
            props.update({"fulcrum.oversample": "none" if method == "class_weight" else method,
                          "fulcrum.balance": json.dumps({k: v for k, v in chosen.items() if k != "plan"})})  # fmt: skip
            if method == "class_weight":
                props["fulcrum.class_weight"] = "balanced"
            g_version = tables.overwrite(rows, lake.path("gold"), run_id, STAGE, props)
            info = {"classes": classes, "plan": chosen["plan"], "fallback": chosen["fallback"]}
        else:
            g_version, info = write_gold(silver, cfg, run_id, version, folds, lake.path("gold"))
        record.outputs.append(("gold", lake.path("gold"), g_version))
        written = tables.read(spark, lake.path("gold"), g_version)
        balance = _balance(written, info["classes"], folds)
        report = StageReport(stage=STAGE, rows_in=silver.count(), rows_out=sum(balance["after"][str(folds)].values()))
        report.details.update({"gold_version": g_version, "method": method, "auto": chosen, "balance": balance,
                               "k_neighbors": cfg.oversample.k_neighbors, "fallback": info["fallback"],
                               "synthetic": {str(f): sum(p["make"] for p in per.values())
                                             for f, per in info["plan"].items()},
                               "dropped": {str(f): sum(p["n"] - p["keep"] for p in per.values())
                                           for f, per in info["plan"].items()}})  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.counts.update({**report.counts(), "gold_rows": written.count()})
        plots.class_balance(balance, Path(cfg.reports_dir) / run_id / "class_balance.png")
        if chosen is not None:  # auto: the candidates' table, for the run report
            (Path(cfg.reports_dir) / run_id / "balance.json").write_text(
                json.dumps({k: v for k, v in chosen.items() if k != "plan"}, indent=2, default=float))
    log.info("oversample %s: gold v%d (%s), final training set %s", cfg.dataset, g_version, method,
             balance["after"][str(folds)])  # fmt: skip
    return report


def _balance(gold: DataFrame, classes: list[str], folds: int) -> dict:
    """Class counts of each fold's training set (and the final one, ``folds``), before and after."""
    before: dict[str, dict[str, int]] = {}
    after: dict[str, dict[str, int]] = {}
    real = {(r["fold"], r["class_name"]): r["count"]
            for r in gold.where(F.col("synthetic_for").isNull()).groupBy("fold", "class_name").count().collect()}  # fmt: skip
    fake = {(r["synthetic_for"], r["class_name"]): r["count"]
            for r in gold.where(F.col("synthetic_for").isNotNull()).groupBy("synthetic_for", "class_name").count().collect()}  # fmt: skip
    cut = {(r["pool"], r["class_name"]): r["count"]
           for r in gold.select("class_name", F.explode("dropped_for").alias("pool")).groupBy("pool", "class_name")
           .count().collect()}  # fmt: skip
    for f in range(folds + 1):
        base = {c: sum(n for (g, cc), n in real.items() if cc == c and g >= 0 and g != f) for c in classes}
        before[str(f)] = base
        after[str(f)] = {c: base[c] - cut.get((f, c), 0) + fake.get((f, c), 0) for c in classes}
    return {"before": before, "after": after}
