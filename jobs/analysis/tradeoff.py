"""Trade-off: is cleaner data or more data worth more? Learning curves per quality level.

The Spark side writes one table, ``tradeoff``, holding a gold-contract copy of the data for
each quality level, all on the folds the split assigned (so every level is scored on the
same validation rows: the curated rows of each fold, as silver has them):

- ``raw``: the validated rows as bronze has them (no cleaning, no deduplication, no
  label normalisation). They only train: each takes the fold of the silver row it
  duplicates (or, when clean or dedup rejected it outright, a fold drawn from its
  duplicate group) and is dropped from that fold's training set, so no row trains on
  its own copy. Rows whose label is not exactly a class are unusable without cleaning
  and are counted, not trained on; rows copied from test rows are left out.
- ``clean``: the real gold rows (clean + dedup + split, as silver).
- ``audited``: ``clean`` minus the audit's ``label_issues`` rows, which no fold trains on
  (they stay in their fold's validation set, like every level's).
- ``oversampled``: the gold table (real and synthetic rows, undersampling as gold has it),
  minus the audited rows and the synthetic rows made from them.

``u``, a uniform draw per duplicate group (synthetic rows draw their source row's), picks
the fraction: a fraction p keeps the training rows with ``u`` < p, so copies are sampled
together and the samples are nested. The Ray side (``python -m training.tradeoff``) then
trains every (level, fraction, fold) as one Tune grid; this module reads its results,
fits a curve per level and writes ``tradeoff.png``, ``tradeoff.html`` and ``tradeoff.json``
with a plain-language conclusion.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import launch, plots
from jobs.config import PipelineConfig
from jobs.curation import curate
from jobs.errors import ConfigError, DataFailedError
from jobs.lakehouse import ledger, tables
from jobs.stage import StageReport
from training.contract import write_json

log = logging.getLogger(__name__)
STAGE = "tradeoff"
LEVELS = ("raw", "clean", "audited", "oversampled")
NAMES = {"raw": "raw (validated only)", "clean": "cleaned + deduplicated", "audited": "+ label audit",
         "oversampled": "+ oversampling"}  # fmt: skip
CONTRACT = ["sample_id", "label", "fold", "synthetic_for", "dropped_for", "augment"]
U_SCALE = 1 << 30


def draw(key: Column, seed: int) -> Column:
    """A uniform number in [0, 1) per value of ``key`` (the same for every row of a duplicate group)."""
    return F.pmod(F.xxhash64(F.lit(seed), key), F.lit(U_SCALE)) / float(U_SCALE)


def build_table(spark: SparkSession, cfg: PipelineConfig, lake: tables.Lake) -> tuple[DataFrame, dict]:
    """(rows of every level in the gold contract plus ``level`` and ``u``, what was built and left out)."""
    version = tables.version(spark, lake.path("gold"))
    if version is None:
        raise ConfigError(f"{cfg.dataset}: gold does not exist yet", fix="run `fulcrum run CONFIG` first")
    props = tables.properties(spark, lake.path("gold"))
    gold = tables.read(spark, lake.path("gold"), version)
    classes = json.loads(props["fulcrum.classes"])
    k = int(props["fulcrum.folds"])
    folds = list(range(cfg.tradeoff.folds or k))
    if len(folds) > k:
        raise ConfigError(f"tradeoff.folds is {len(folds)} but the split made {k} folds",
                          fix=f"set tradeoff.folds to at most {k}")  # fmt: skip
    features = [f["name"] for f in json.loads(props.get("fulcrum.features", "[]"))]
    embedded = props.get("fulcrum.image_embedded") == "true"
    image = ["image"] if embedded else ([cfg.images.path_column] if cfg.images else [])
    columns = CONTRACT + features + image
    every = F.array(*[F.lit(f) for f in range(k)])
    info: dict = {"gold_version": version, "classes": classes, "folds": folds, "levels": [], "left_out": {}}

    real = gold.where(F.col("synthetic_for").isNull() & (F.col("fold") >= 0))
    flagged = _flagged(spark, cfg, lake, real, info)
    levels: list[DataFrame] = []
    for level in cfg.tradeoff.levels:
        if level == "raw":
            rows = _raw(spark, cfg, lake, gold, k, columns, info).unionByName(
                real.select(*columns).withColumn("dropped_for", every).withColumn("_group", F.col("sample_id")))
        elif level == "clean":
            rows = real.select(*columns).withColumn("dropped_for", F.lit(None).cast("array<int>"))
            rows = rows.withColumn("_group", F.col("sample_id"))
        elif level == "audited":
            if flagged is None:
                continue
            rows = real.select(*columns).join(flagged, "sample_id", "left")
            rows = rows.withColumn("dropped_for", F.when(F.col("_flagged"), every)).drop("_flagged")
            rows = rows.withColumn("_group", F.col("sample_id"))
        else:
            rows = gold.where(F.when(F.col("synthetic_for").isNull(), F.col("fold") >= 0).otherwise(F.col("synthetic_for") < k))
            rows = rows.withColumn("_group", F.coalesce("synthetic_of", "sample_id"))
            if flagged is not None:
                source = flagged.select(F.col("sample_id").alias("_group"), F.col("_flagged").alias("_source_flagged"))
                rows = rows.join(source, "_group", "left").where(~F.coalesce("_source_flagged", F.lit(False)) |
                                                                 F.col("synthetic_for").isNull())  # fmt: skip
                rows = rows.withColumn("dropped_for", F.when(F.col("synthetic_for").isNull() & F.col("_source_flagged"),
                                                             every).otherwise(F.col("dropped_for")))  # fmt: skip
            rows = rows.select(*columns, "_group")
        info["levels"].append(level)
        levels.append(rows.withColumn("level", F.lit(level)))
    if not levels:
        raise ConfigError(f"{cfg.dataset}: none of the levels {cfg.tradeoff.levels} can be built here",
                          fix="add clean, or run `fulcrum audit CONFIG` first for audited")  # fmt: skip
    table = levels[0]
    for more in levels[1:]:
        table = table.unionByName(more)
    table = table.withColumn("u", draw(F.col("_group"), cfg.seed)).drop("_group")
    info["balancing"] = json.loads(props.get("fulcrum.balance") or "{}") or None  # oversample.method auto's choice
    info["props"] = {**{k_: v for k_, v in props.items() if k_.startswith("fulcrum.")},
                     "fulcrum.tradeoff_levels": json.dumps(info["levels"]), "fulcrum.gold_version": version}  # fmt: skip
    return table, info


def _flagged(spark: SparkSession, cfg: PipelineConfig, lake: tables.Lake, real: DataFrame, info: dict) -> DataFrame | None:
    """sample_id, _flagged of the audit's rows still in gold; None (and why, in ``info``) when there are none."""
    if not {"audited", "oversampled"} & set(cfg.tradeoff.levels):
        return None
    why = None
    if not tables.exists(spark, lake.path("label_issues")):
        why = "no label audit has run yet (`fulcrum audit CONFIG`)"
    elif cfg.clean.label_issues != "report":
        why = (f"clean.label_issues is {cfg.clean.label_issues}: silver already holds the "
               "audit's effect, so `clean` includes it; set it to report to measure it apart")  # fmt: skip
    if why is not None:
        if "audited" in cfg.tradeoff.levels:
            info["left_out"]["audited"] = why
        return None
    issues = tables.read(spark, lake.path("label_issues")).select("sample_id").distinct()
    flagged = real.select("sample_id").join(issues, "sample_id").withColumn("_flagged", F.lit(True))
    info["flagged"] = flagged.count()
    return flagged


def _raw(spark: SparkSession, cfg: PipelineConfig, lake: tables.Lake, gold: DataFrame, k: int, columns: list[str],
         info: dict) -> DataFrame:  # fmt: skip
    """The validated rows as bronze has them, as training-only rows of the gold contract."""
    rows, _ = curate.validated_rows(spark, cfg, lake)
    index = F.create_map(*[x for i, c in enumerate(info["classes"]) for x in (F.lit(str(c)), F.lit(i))])
    rows = rows.withColumn("_label", F.element_at(index, F.col(cfg.columns.label).cast("string")))
    dups = (tables.read(spark, lake.path("quarantine")).where(F.col("stage") == "dedup")
            .select("sample_id", "duplicate_of", F.col("dup_group").alias("_dup_group")))  # fmt: skip
    silver = gold.where(F.col("synthetic_for").isNull()).select(F.col("sample_id").alias("_rep"),
                                                                F.col("fold").alias("_rep_fold"))  # fmt: skip
    rows = rows.join(dups, "sample_id", "left").withColumn("_rep", F.coalesce("duplicate_of", "sample_id"))
    rows = rows.join(silver, "_rep", "left")
    counts = rows.agg(F.count(F.lit(1)).alias("n"), F.count_if(F.col("_label").isNull()).alias("unusable"),
                      F.count_if(F.col("_label").isNotNull() & (F.col("_rep_fold") < 0)).alias("test")).first()  # fmt: skip
    info["raw"] = {"validated_rows": counts["n"], "unusable_labels": counts["unusable"],
                   "copies_of_test_rows": counts["test"],  # the test rows themselves and their copies
                   "rows": counts["n"] - counts["unusable"] - counts["test"]}  # fmt: skip
    # Copies of test rows stay out; rows whose label is not exactly a class cannot train without cleaning.
    rows = rows.where(F.col("_label").isNotNull() & (F.col("_rep_fold").isNull() | (F.col("_rep_fold") >= 0)))
    group = F.coalesce(F.when(F.col("_rep_fold").isNotNull(), F.col("_rep")), F.col("_dup_group"), F.col("sample_id"))
    pseudo = F.pmod(F.xxhash64(F.lit(cfg.seed), group), F.lit(k))
    schema = {f.name: f.dataType for f in gold.schema.fields}
    path = cfg.images.path_column if cfg.images else None
    out = rows.select(
        "sample_id", F.col("_label").cast(schema["label"]).alias("label"), F.lit(k).cast(schema["fold"]).alias("fold"),
        F.lit(None).cast(schema["synthetic_for"]).alias("synthetic_for"),
        F.array(F.coalesce(F.col("_rep_fold"), pseudo).cast("int")).alias("dropped_for"),
        F.lit(False).alias("augment"),
        *[F.col(c).cast(schema[c]).alias(c) for c in columns if c not in CONTRACT and c not in ("image", path)],
        *([F.col(path).cast("string").alias(path)] if path else []), group.alias("_group"),
    )  # fmt: skip
    if "image" in columns:
        from jobs.validation.probe import embed_images

        im = cfg.images
        out = embed_images(out, path, cfg.resolve(im.root), im.size, im.channels).drop(path)
    return out.select(*columns, "_group")


def training_rows(table: DataFrame, folds: list[int], fractions: list[float]) -> dict[str, dict[float, list[int]]]:
    """Real training rows of each level at each fraction, per fold (the curves' x): one aggregation."""
    exprs = []
    for f in folds:
        trains = (F.col("synthetic_for").isNull() & (F.col("fold") != f) & (F.col("fold") >= 0)
                  & ~F.coalesce(F.array_contains("dropped_for", f), F.lit(False)))  # fmt: skip
        exprs += [F.count_if(trains & (F.col("u") < p)).alias(f"n_{f}_{i}") for i, p in enumerate(fractions)]
    out: dict[str, dict[float, list[int]]] = {}
    for r in table.groupBy("level").agg(*exprs).collect():
        out[r["level"]] = {p: [r[f"n_{f}_{i}"] for f in folds] for i, p in enumerate(fractions)}
    return out


def curves(trials: list[dict], rows: dict[str, dict[float, list[int]]], metric: str) -> dict[str, list[dict]]:
    """Per level, per fraction: mean real training rows and the metric's mean ± std over folds."""
    out: dict[str, list[dict]] = {}
    for t in trials:
        out.setdefault(t["level"], [])
    for level in out:
        for fraction in sorted({t["fraction"] for t in trials if t["level"] == level}):
            values = [float(t["metrics"][metric]) for t in trials if t["level"] == level and t["fraction"] == fraction]
            seen = [int(t["train_rows"]) for t in trials if t["level"] == level and t["fraction"] == fraction]
            out[level].append({"fraction": fraction, "rows": float(np.mean(rows[level][fraction])),
                               "rows_with_synthetic": float(np.mean(seen)), "mean": float(np.nanmean(values)),
                               "std": float(np.nanstd(values)), "folds": len(values)})  # fmt: skip
    return out


def fit_log(points: list[dict]) -> tuple[float, float] | None:
    """Least squares of metric = a + b·ln(rows) over a curve's points; None with fewer than two sizes."""
    x = np.log([p["rows"] for p in points if p["rows"] > 0])
    y = np.array([p["mean"] for p in points if p["rows"] > 0])
    if len(set(x.round(9))) < 2:
        return None
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def conclude(curve: dict[str, list[dict]], metric: str) -> dict:
    """Which step bought the most, and how many rows the raw pipeline would need to match the best level.

    Steps compare each level with the one before it (pipeline order) at the largest
    fraction; "more data" is the gain from the second-largest fraction to the largest on
    the best level's curve. The rows raw would need come from a log-linear fit of raw's
    curve, solved for the best level's metric; it is not extrapolated when raw's curve is
    flat or falling, and called out when it is far beyond the data measured.
    """
    levels = [lv for lv in LEVELS if lv in curve and curve[lv]]
    full = {lv: curve[lv][-1] for lv in levels}
    best = max(levels, key=lambda lv: full[lv]["mean"])
    steps = [{"step": f"{NAMES[b]} (from {a})", "from": a, "to": b, "gain": full[b]["mean"] - full[a]["mean"]}
             for a, b in zip(levels, levels[1:], strict=False)]  # fmt: skip
    data_gain = None
    if len(curve[best]) >= 2:
        lo, hi = curve[best][-2], curve[best][-1]
        data_gain = {"step": f"more data: {lo['fraction']:.0%} → {hi['fraction']:.0%} of the rows ({NAMES[best]})",
                     "from_rows": lo["rows"], "to_rows": hi["rows"], "gain": hi["mean"] - lo["mean"]}  # fmt: skip
    candidates = steps + ([data_gain] if data_gain else [])
    top = max(candidates, key=lambda s: s["gain"]) if candidates else None
    lines = []
    name = metric.replace("_", "-")
    if top is not None and top["gain"] > 0:
        lines.append(f"The step that bought the most {name} is {top['step']}: {top['gain']:+.3f}.")
    elif top is not None:
        lines.append(f"No step raised the {name} at full size (the largest change is {top['gain']:+.3f}).")
    for s in steps:
        lines.append(f"{NAMES[s['to']]}: {s['gain']:+.3f} against {NAMES[s['from']]} at full size.")
    if data_gain:
        grow = data_gain["to_rows"] / max(data_gain["from_rows"], 1)
        lines.append(f"More data on the {NAMES[best]} curve: {grow:.1f}× the rows bought {data_gain['gain']:+.3f}.")
    need = None
    if "raw" in levels and best != "raw":
        target = full[best]["mean"]
        raw_rows = full["raw"]["rows"]
        fit = fit_log(curve["raw"])
        if full["raw"]["mean"] >= target:
            lines.append(f"The raw pipeline already matches {NAMES[best]} ({full['raw']['mean']:.3f}).")
        elif fit is None or fit[1] <= 1e-6:
            lines.append(f"Raw data does not catch up with {NAMES[best]} ({target:.3f}) by adding rows: its curve is "
                         "flat or falling, so cleaning is worth more than any amount of raw data measured here.")  # fmt: skip
            need = {"rows": None, "factor": None, "target": target}
        else:
            a, b = fit
            rows = math.exp(min((target - a) / b, 700.0))
            factor = rows / raw_rows
            need = {"rows": rows, "factor": factor, "target": target, "fit": {"a": a, "b": b}}
            far = " — far beyond the sizes measured, so read it as 'not by data alone'" if factor > 10 else ""
            lines.append(f"To match {NAMES[best]} ({name} {target:.3f}) the raw pipeline would need ≈ {factor:.1f}× "
                         f"its {raw_rows:,.0f} training rows (≈ {rows:,.0f}), extrapolated from a log-linear fit "
                         f"of its curve{far}.")  # fmt: skip
    return {"metric": metric, "best": best, "steps": steps, "more_data": data_gain, "top": top,
            "raw_needs": need, "text": lines}  # fmt: skip


def write_page(folder: Path, cfg: PipelineConfig, run_id: str, result: dict) -> Path:
    from jobs.report import render

    raw = result["info"].get("raw")
    raw_text = (f"{raw['validated_rows']:,} validated rows; {raw['unusable_labels']:,} with a label that is not "
                f"exactly a class (unusable without cleaning); {raw['copies_of_test_rows']:,} test rows and "
                f"their copies left out; {raw['rows']:,} train") if raw else "not in this grid"  # fmt: skip
    html = render("tradeoff.html.j2",
        dataset=cfg.dataset, run_id=run_id, gold_version=result["info"]["gold_version"], folds=result["info"]["folds"],
        trials=len(result["trials"]), seconds=result["seconds"], metric=result["metric"], conclusion=result["conclusion"],
        plot=plots.data_uri(folder / "tradeoff.png"),
        curves=result["curves"], names=NAMES, raw=raw_text, flagged=result["info"].get("flagged"),
        left_out=result["info"]["left_out"], balancing=result["info"].get("balancing"))  # fmt: skip
    path = folder / "tradeoff.html"
    path.write_text(html)
    return path


def command(cfg: PipelineConfig, table: str, version: int, levels: list[str], folds: list[int], out: str,
            run_id: str = "tradeoff") -> list[str]:  # fmt: skip
    """The ``python -m training.tradeoff`` command line: the train section's flags, the grid's."""
    return launch.ray_side(cfg, run_id, "training.tradeoff", grid_args(cfg, table, version, levels, folds, out))


def grid_args(cfg: PipelineConfig, table: str, version: int, levels: list[str], folds: list[int], out: str) -> list[str]:
    """The grid's arguments. Every cell trains with the train section's hyperparameters as written
    (``train.search`` is not run)."""
    t = cfg.tradeoff
    train = cfg.train.tuned(tensorboard=False, search=None, **({"epochs": t.epochs} if t.epochs else {}))
    return launch.grid_args(table, version, out, train, levels, folds, t.fractions)


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> StageReport:
    """Job: gold (+ validated bronze, quarantine, label_issues) → the trade-off table → the grid on Ray → report."""
    lake = tables.Lake(cfg.lake_dir)
    folder = Path(cfg.reports_dir) / run_id
    with ledger.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        start = time.perf_counter()
        table, info = build_table(spark, cfg, lake)
        record.inputs.append(("gold", lake.path("gold"), info["gold_version"]))
        # Clustered by level (range-partitioned, sorted within each file): the Ray side's level filter then skips
        # files and row groups of other levels by their Parquet statistics instead of reading and dropping rows.
        # (A small table may still land in one file: Spark coalesces small partitions; reading it whole is cheap.)
        table = table.repartitionByRange(max(1, len(info["levels"])), "level").sortWithinPartitions("level")
        version = tables.overwrite(table, lake.path("tradeoff"), run_id, STAGE, info.pop("props"))
        record.outputs.append(("tradeoff", lake.path("tradeoff"), version))
        written = tables.read(spark, lake.path("tradeoff"), version)
        rows = training_rows(written, info["folds"], cfg.tradeoff.fractions)
        empty = [f"{lv} at {p:.0%}" for lv, per in rows.items() for p, n in per.items() if min(n) == 0]
        if empty:
            raise DataFailedError(f"{cfg.dataset}: no training rows for {', '.join(empty)}",
                                  fix="raise the smallest tradeoff.fractions")  # fmt: skip
        out = str(folder / "tradeoff")
        grid = launch.grid(cfg, run_id, grid_args(cfg, lake.path("tradeoff"), version, info["levels"], info["folds"],
                                                   out), out, "the trade-off grid",
                           "see the message above; `python -m training.tradeoff --help`")  # fmt: skip
        metric = cfg.tradeoff.metric
        curve = curves(grid["trials"], rows, metric)
        result = {"info": info, "metric": metric, "curves": curve, "conclusion": conclude(curve, metric),
                  "trials": grid["trials"], "seconds": grid["seconds"], "concurrent": grid["concurrent"]}  # fmt: skip
        plots.tradeoff_curves(curve, metric, {lv: NAMES[lv] for lv in LEVELS}, folder / "tradeoff.png")
        page = write_page(folder, cfg, run_id, result)
        write_json(result, folder / "tradeoff.json")
        report = StageReport(stage=STAGE, rows_in=written.count(), rows_out=len(grid["trials"]))
        report.details.update({"tradeoff_version": version, "levels": info["levels"], "curves": curve,
                               "conclusion": result["conclusion"], "html": str(page), "left_out": info["left_out"],
                               "seconds_grid": grid["seconds"]})  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.counts.update({"trials": len(grid["trials"]), "table_rows": report.rows_in})
    log.info("tradeoff %s: %d trainings; %s", cfg.dataset, len(grid["trials"]), " ".join(result["conclusion"]["text"][:1]))
    return report
