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

The synthetic rows are made by one shuffle and one Arrow UDF per (pool, class, cell) bucket
(``jobs/balancing/engine.py``; neighbours in ``knn.py``). Counts are exact: a class needing m
rows from n sources gives each source ``floor(m · w_i / Σw)`` copies, and the largest
remainders one more (w = 1, or the ADASYN hardness), ties by a seeded hash. The stage report
gives the recall@k of the neighbours where they were approximate.
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
from pyspark.sql import types as T

from jobs import plots
from jobs.balancing import engine
from jobs.config import PipelineConfig
from jobs.errors import ConfigError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.ranks import hash_bucket, rank_within
from jobs.stage import StageReport
from training.contract import write_json

log = logging.getLogger(__name__)
STAGE = "oversample"
LINEAGE = [("synthetic_for", "int"), ("synthetic_of", "string"), ("synthetic_with", "string"),
           ("dropped_for", "array<int>")]  # fmt: skip


# Statistics for the contract's columns wherever they sit (Delta's default: the first 32 columns), so a file
# of test rows only is known by its `fold` range without being opened (``training.gold.Gold.files``).
STATS_COLUMNS = "label,fold,synthetic_for"


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


def _pair(pool: str, label: str) -> Column:
    """``pool|label`` as one string, to test (pool, class) pairs against a set."""
    return F.concat_ws("|", F.col(pool).cast("string"), F.col(label).cast("string"))


def _hash(seed: int, *cols) -> Column:
    return F.xxhash64(F.lit(seed), *cols)


def undersampled(pools: DataFrame, plan_df: DataFrame, label: str, seed: int) -> DataFrame:
    """``sample_id`` → ``dropped_for``: the pools a real row is cut from."""
    cut = pools.join(F.broadcast(plan_df.where("_keep < _n")), ["pool", label])
    cut = cut.withColumn("_h", _hash(seed, F.lit("under"), "pool", "sample_id"))
    cut = rank_within(cut, ["pool", label], hash_bucket(F.col("_h")), [F.col("_h"), F.col("sample_id")])
    cut = cut.where(F.col("_rank") > F.col("_keep"))
    return cut.groupBy("sample_id").agg(F.array_sort(F.collect_list("pool")).alias("dropped_for"))


def synthesize(silver: DataFrame, cfg: PipelineConfig, folds: int, plan: dict) -> DataFrame | None:
    """Synthetic rows for every pool: silver's columns, features made by the planned method, plus lineage.
    One shuffle and one Arrow UDF per (pool, class, cell) bucket (``jobs/balancing/engine.py``)."""
    label, seed, o = cfg.columns.label, cfg.seed, cfg.oversample
    groups = {(f, c): p for f, per in plan.items() for c, p in per.items() if p["make"]}
    if not groups:
        return None
    tabular = cfg.kind == "tabular"
    numeric = [f.name for f in cfg.columns.features if f.kind == "numeric"] if tabular else []
    categorical = [f.name for f in cfg.columns.features if f.kind == "categorical"] if tabular else []
    everyone = pooled(silver, folds).withColumn(label, F.col(label).cast("string"))
    everyone = everyone.withColumn("_h", _hash(seed, "pool", "sample_id"))
    growing = sorted({c for _, c in groups})  # only the classes that grow are pooled (a filter before the explode)
    src = pooled(silver.where(F.col(label).cast("string").isin(growing)), folds)
    src = src.withColumn(label, F.col(label).cast("string")).withColumn("_h", _hash(seed, "pool", "sample_id"))
    src = src.where(_pair("pool", label).isin([f"{f}|{c}" for f, c in groups]))  # a hash-set test, no join
    spec = {"numeric": numeric, "categorical": categorical, "label": label, "k": o.k_neighbors,
            "exact_rows": o.knn_exact_rows, "mismatch": 1.0}  # fmt: skip
    adasyn = {g for g, p in groups.items() if p["method"] == "adasyn"}
    if adasyn:  # ADASYN's weights: neighbours among every class of the pool, a first compact pass
        pools = sorted({f for f, _ in adasyn})
        asked = _pair("pool", label).isin([f"{f}|{c}" for f, c in adasyn])
        rows = everyone.where(F.col("pool").isin(pools)).withColumn("_ask", asked)
        sizes = {(f,): sum(p["n"] for p in plan[f].values()) for f in pools}
        rows, stats = engine.cut_into_cells(rows, ["pool"], sizes, cfg, numeric, set())
        schema = "pool int, sample_id string, _w double"
        hard = rows.groupBy("pool", "_cell").applyInArrow(engine.hardener({**spec, "stats": stats}), schema)
        src = src.join(hard, ["pool", "sample_id"], "left").withColumn("_w", F.coalesce("_w", F.lit(0.0)))
    else:
        src = src.withColumn("_w", F.lit(1.0))
    sizes = {g: p["n"] for g, p in groups.items()}
    rand = {g for g, p in groups.items() if p["method"] == "random"}
    src, stats = engine.cut_into_cells(src, ["pool", label], sizes, cfg, numeric, rand)
    quotas = {}
    cut = [g for g, n in sizes.items() if n > o.bucket_rows]
    if cut:  # the group's make shared among its cells by weight: one small aggregation
        weights: dict[tuple, dict[int, float]] = {}
        for r in (src.where("_home").where(engine.in_groups(["pool", label], cut)).groupBy("pool", label, "_cell")
                  .agg(F.sum("_w").alias("w"), F.count(F.lit(1)).alias("n")).collect()):  # fmt: skip
            g = (r["pool"], r[label])
            w = r["w"] if groups[g]["method"] == "adasyn" else r["n"]
            weights.setdefault(g, {})[r["_cell"]] = float(w)
        for g, per in weights.items():
            quotas.update({(*g, c): q for c, q in engine.share_quota(groups[g]["make"], per).items()})
    fields = {f.name: f for f in src.schema.fields}
    keep = [c for c in silver.columns if c != "sample_id"]
    out = [*keep, "pool", "sample_id", "synthetic_with", "_copy"]
    schema = T.StructType([fields[c] for c in [*keep, "pool", "sample_id"]]
                          + [T.StructField("synthetic_with", T.StringType()), T.StructField("_copy", T.IntegerType())])
    udf = engine.generator({**spec, "stats": stats, "groups": groups, "quotas": quotas, "out": out})
    made = src.groupBy("pool", label, "_cell").applyInArrow(udf, schema)
    return made.select(
        *[F.col(c) for c in silver.columns if c not in ("sample_id", label)],
        F.col(label),
        F.col("pool").alias("synthetic_for"),
        F.col("sample_id").alias("synthetic_of"),
        "synthetic_with",
        F.lit(None).cast("array<int>").alias("dropped_for"),
        F.sha2(F.concat_ws("|", "sample_id", "pool", "_copy"), 256).substr(1, 32).alias("sample_id"),
    )


def build_gold(silver: DataFrame, cfg: PipelineConfig, folds: int) -> tuple[DataFrame, dict]:
    label = cfg.columns.label
    counts: dict[int, dict[str, int]] = {}
    every = silver.groupBy("fold", label).count().collect()  # one job: the classes (test part too) and the counts
    names = sorted({r[label] for r in every})
    for r in every:
        if r["fold"] is not None and r["fold"] >= 0:
            counts.setdefault(r["fold"], {})[str(r[label])] = r["count"]
    plan = plan_pools(counts, cfg, folds)
    for f, per in plan.items():
        for c, p in per.items():
            if p["fallback"]:
                log.warning("oversample %s: class %r has %d rows in the training part of %s, fewer than "
                            "k_neighbors + 1 = %d: it is oversampled at random instead of by %s", cfg.dataset, c,
                            p["keep"], f"fold {f}" if f < folds else "the final model", cfg.oversample.k_neighbors + 1,
                            cfg.oversample.method)  # fmt: skip
    # The test part goes into files of its own (a union keeps its inputs' partitions apart): training reads
    # skip them by the Delta log's statistics until the final model is scored (``training.gold.Gold.files``).
    test = F.col("fold").eqNullSafe(-1)
    real = silver.where(~test).withColumn(label, F.col(label).cast("string"))
    real = real.select("*", *[F.lit(None).cast(t).alias(c) for c, t in LINEAGE if c != "dropped_for"])
    held = silver.where(test).withColumn(label, F.col(label).cast("string"))
    held = held.select("*", *[F.lit(None).cast(t).alias(c) for c, t in LINEAGE])
    if any(p["keep"] < p["n"] for per in plan.values() for p in per.values()):
        cut = undersampled(pooled(real, folds), _plan_frame(silver.sparkSession, plan, label), label, cfg.seed)
        real = real.join(cut, "sample_id", "left")
    else:
        real = real.withColumn("dropped_for", F.lit(None).cast("array<int>"))
    fake = synthesize(silver, cfg, folds, plan) if cfg.oversample.method != "none" else None
    index = F.create_map(*[x for i, c in enumerate(names) for x in (F.lit(str(c)), F.lit(i))])

    def finish(rows: DataFrame, sources: DataFrame) -> DataFrame:
        """The contract's derived columns, and the images embedded from ``sources``' files (each once)."""
        rows = rows.withColumn("augment", F.col("synthetic_for").isNotNull() & F.lit(cfg.kind == "images"))
        rows = rows.withColumn("class_name", F.col(label)).withColumn("label", F.element_at(index, F.col(label)))
        if label != "label":
            rows = rows.drop(label)
        if cfg.images and cfg.images.embed:
            from jobs.validation.probe import embed_images

            im = cfg.images
            pixels = embed_images(sources.select("sample_id", im.path_column), im.path_column, cfg.resolve(im.root),
                                  im.size, im.channels).select(F.col("sample_id").alias("_src"), "image")  # fmt: skip
            rows = rows.join(pixels, F.coalesce("synthetic_of", "sample_id") == F.col("_src")).drop("_src")
        return rows

    rows = finish(real if fake is None else real.unionByName(fake), silver.where(~test))
    rows = rows.unionByName(finish(held, silver.where(test)))
    fallback = [{"pool": f, "class": c, "rows": p["keep"]} for f, per in plan.items() for c, p in per.items()
                if p["fallback"]]  # fmt: skip
    return rows, {"classes": names, "plan": plan, "fallback": fallback}


def gold_properties(cfg: PipelineConfig, run_id: str, folds: int, classes: list[str], silver_version: int) -> dict:
    """The ``fulcrum.*`` table properties of a gold-contract table (what the Ray side reads: ``training.gold``)."""
    features = [{"name": f.name, "kind": f.kind} for f in cfg.columns.features]
    props = {"fulcrum.run_id": run_id, "fulcrum.kind": cfg.kind, "fulcrum.folds": folds,
             "fulcrum.classes": json.dumps(classes), "fulcrum.features": json.dumps(features),
             "fulcrum.silver_version": silver_version, "fulcrum.oversample": cfg.oversample.method,
             "fulcrum.class_weight": "none", "fulcrum.balance": "{}",
             "delta.dataSkippingStatsColumns": STATS_COLUMNS}  # fmt: skip
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
        neighbours = engine.recall_estimate(written, silver, cfg, folds, info["plan"])
        report = StageReport(stage=STAGE, rows_in=silver.count(), rows_out=sum(balance["after"][str(folds)].values()))
        report.details.update({"gold_version": g_version, "method": method, "auto": chosen, "balance": balance,
                               "k_neighbors": cfg.oversample.k_neighbors, "fallback": info["fallback"],
                               "knn": neighbours,
                               "synthetic": {str(f): sum(p["make"] for p in per.values())
                                             for f, per in info["plan"].items()},
                               "dropped": {str(f): sum(p["n"] - p["keep"] for p in per.values())
                                           for f, per in info["plan"].items()}})  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.counts.update({**report.counts(), "gold_rows": written.count()})
        plots.class_balance(balance, Path(cfg.reports_dir) / run_id / "class_balance.png")
        if chosen is not None:  # auto: the candidates' table, for the run report
            write_json({k: v for k, v in chosen.items() if k != "plan"}, Path(cfg.reports_dir) / run_id / "balance.json")
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
