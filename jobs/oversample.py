"""Oversample per fold, leak-free: silver → gold (the table the Ray side trains from).

For each fold f (and once more, ``synthetic_for = k``, for the final model) the
synthetic rows are made only from that fold's training part: real rows whose ``fold``
is not f and not -1 (for k: every real row but the test part). So no synthetic row ever
carries information from the rows it will be validated on.

Method ``random``: each minority class of the training part is resampled with
replacement up to ``target_ratio`` × the largest class's count. Sampling is
deterministic (a seeded hash orders the rows) and distributed: every source row gets
``floor(m / n)`` copies, the first ``m mod n`` rows one more. Image copies are flagged
``augment`` so training augments them instead of seeing the same pixels. SMOTE, ADASYN,
SMOTE-NC and undersampling are not built yet.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import io, runs
from jobs.config import PipelineConfig
from jobs.errors import ConfigError
from jobs.stage import StageReport

log = logging.getLogger(__name__)
STAGE = "oversample"


def class_names(silver: DataFrame, label: str) -> list[str]:
    return sorted(r[0] for r in silver.select(label).distinct().collect())


def synthesize(silver: DataFrame, cfg: PipelineConfig, folds: int) -> tuple[DataFrame | None, dict]:
    """Synthetic rows for every fold and the final model, with ``synthetic_for`` and ``synthetic_of``."""
    label, ratio = cfg.columns.label, cfg.oversample.target_ratio
    counts: dict[int, dict[str, int]] = {}
    for r in silver.where(F.col("fold") >= 0).groupBy("fold", label).count().collect():
        counts.setdefault(r["fold"], {})[r[label]] = r["count"]
    classes = sorted({c for per in counts.values() for c in per})
    plan: dict[int, dict[str, int]] = {}
    for f in range(folds + 1):  # training part of fold f; f == folds: every non-test row
        train = {c: sum(per.get(c, 0) for g, per in counts.items() if g != f) for c in classes}
        target = math.ceil(ratio * max(train.values(), default=0))
        plan[f] = {c: max(0, target - n) for c, n in train.items() if n > 0}
    parts = []
    for f, need in plan.items():
        for cls, m in need.items():
            if m == 0:
                continue
            pool = silver.where((F.col(label) == cls) & (F.col("fold") >= 0) & (F.col("fold") != f))
            n = sum(per.get(cls, 0) for g, per in counts.items() if g != f)
            order = Window.orderBy(F.xxhash64(F.lit(cfg.seed), F.lit(f), "sample_id"), "sample_id")
            ranked = pool.withColumn("_rank", F.row_number().over(order) - 1)
            copies = F.lit(m // n) + F.when(F.col("_rank") < m % n, 1).otherwise(0)
            made = ranked.withColumn("_copy", F.explode(F.sequence(F.lit(1), copies))).where(copies > 0)
            made = made.select(
                "*",
                F.lit(f).alias("synthetic_for"),
                F.col("sample_id").alias("synthetic_of"),
            ).withColumn("sample_id", F.sha2(F.concat_ws("|", "sample_id", F.lit(f), "_copy"), 256).substr(1, 32))
            parts.append(made.drop("_rank", "_copy"))
    if not parts:
        return None, plan
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out, plan


def build_gold(silver: DataFrame, cfg: PipelineConfig, folds: int) -> tuple[DataFrame, dict]:
    label = cfg.columns.label
    names = class_names(silver, label)
    index = F.create_map(*[x for i, c in enumerate(names) for x in (F.lit(c), F.lit(i))])
    real = silver.select("*", F.lit(None).cast("int").alias("synthetic_for"),
                         F.lit(None).cast("string").alias("synthetic_of"))  # fmt: skip
    fake, plan = (None, {}) if cfg.oversample.method == "none" else synthesize(silver, cfg, folds)
    rows = real if fake is None else real.unionByName(fake)
    rows = rows.withColumn("augment", F.col("synthetic_for").isNotNull() & F.lit(cfg.kind == "images"))
    rows = rows.withColumn("class_name", F.col(label)).withColumn("label", F.element_at(index, F.col(label)))
    if label != "label":
        rows = rows.drop(label)
    return rows, {"classes": names, "plan": plan}


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: silver (pinned version) → gold, one overwrite commit with the ``fulcrum.*`` properties."""
    lake = io.Lake(cfg.lake_dir)
    with runs.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        start = time.perf_counter()
        version = io.version(spark, lake.path("silver"))
        if version is None:
            raise ConfigError(f"{cfg.dataset}: silver does not exist yet", fix="run `fulcrum curate CONFIG` first")
        record.inputs.append(("silver", lake.path("silver"), version))
        silver = io.read(spark, lake.path("silver"), version)
        folds = int(io.properties(spark, lake.path("silver")).get("fulcrum.folds", cfg.split.folds))
        gold, info = build_gold(silver, cfg, folds)
        features = [{"name": f.name, "kind": f.kind} for f in cfg.columns.features]
        props = {"fulcrum.run_id": run_id, "fulcrum.kind": cfg.kind, "fulcrum.folds": folds,
                 "fulcrum.classes": json.dumps(info["classes"]), "fulcrum.features": json.dumps(features),
                 "fulcrum.silver_version": version, "fulcrum.oversample": cfg.oversample.method}  # fmt: skip
        if cfg.images:
            props.update({"fulcrum.image_size": cfg.images.size, "fulcrum.image_channels": cfg.images.channels,
                          "fulcrum.image_column": cfg.images.path_column,
                          "fulcrum.image_root": cfg.resolve(cfg.images.root)})  # fmt: skip
        g_version = io.overwrite(gold, lake.path("gold"), run_id, STAGE, props)
        record.outputs.append(("gold", lake.path("gold"), g_version))
        balance = _balance(io.read(spark, lake.path("gold"), g_version), info["classes"], folds)
        report = StageReport(stage=STAGE, rows_in=silver.count(), rows_out=sum(balance["after"][str(folds)].values()))
        report.details.update({"gold_version": g_version, "method": cfg.oversample.method, "balance": balance,
                               "synthetic": {str(f): sum(n.values()) for f, n in info["plan"].items()}})  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.counts.update({"rows_in": report.rows_in, "gold_rows": gold.count()})
        _plot(balance, Path(cfg.reports_dir) / run_id / "class_balance.png")
    log.info("oversample %s: gold v%d (%s), final training set %s", cfg.dataset, g_version, cfg.oversample.method,
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
    for f in range(folds + 1):
        base = {c: sum(n for (g, cc), n in real.items() if cc == c and g >= 0 and g != f) for c in classes}
        before[str(f)] = base
        after[str(f)] = {c: base[c] + fake.get((f, c), 0) for c in classes}
    return {"before": before, "after": after}


def _plot(balance: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    sets = list(balance["before"])
    classes = sorted(next(iter(balance["before"].values())))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, key in zip(axes, ("before", "after"), strict=True):
        bottom = [0] * len(sets)
        for cls in classes:
            values = [balance[key][s][cls] for s in sets]
            ax.bar(["final" if s == sets[-1] else s for s in sets], values, bottom=bottom, label=cls)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(f"training sets, {key} oversampling")
        ax.set_xlabel("fold")
    axes[0].set_ylabel("rows")
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
