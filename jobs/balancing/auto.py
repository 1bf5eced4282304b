"""``oversample.method: auto``: balance by measurement, not by habit.

Resampling often leaves ranking metrics unchanged and miscalibrates probabilities, and where
it helps depends on the data. So the candidates (``none`` always; by default also
``class_weight``, ``random`` and, for tables, ``smote`` — ``smotenc`` with categorical
features) are each built leak-free per fold exactly as gold would be (``build_gold``; the
``class_weight`` candidate is ``none``'s rows trained with a class-balanced loss) and written
as one table, ``balance/candidates``, with a ``level`` column per candidate. The Ray side
trains every (candidate, fold) as a slot of one engine run (``python -m training.tradeoff``,
one pass over the rows per epoch, the train section's settings without the search) and
scores each on the same validation rows: the fold's real rows.

The pick (``pick``): the candidate with the highest mean of ``oversample.metric`` over the folds
leads, and every candidate it does not beat *clearly* on the same folds is tied with it: clearly
means the mean of the paired per-fold differences above ``oversample.tolerance`` and more than
two standard errors above zero (two trainings on different rows differ by chance; the error is
the corrected resampled t-test's, ``paired``; ``audit.verify`` applies the same test to the
audit's verdicts). The tie goes to the lowest mean Brier score (calibration), then to the
simplest (``none`` < ``class_weight`` < the resamplers in the config's order). Gold is then the
chosen candidate's rows (no second build); a ``class_weight`` choice is recorded in gold's
properties and the train stage trains with a balanced loss.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import BALANCERS, PipelineConfig
from jobs.lakehouse import ledger, tables

log = logging.getLogger(__name__)
INTERPOLATING = ("smote", "adasyn", "smotenc")


def candidates(cfg: PipelineConfig) -> list[str]:
    """What auto compares, simplest first. Images interpolate nothing (their resamplers repeat rows)."""
    o = cfg.oversample
    if o.candidates:
        names = ["none", *o.candidates]
    else:
        names = ["none", "class_weight", "random"]
        if cfg.kind == "tabular":
            names.append("smotenc" if any(f.kind == "categorical" for f in cfg.columns.features) else "smote")
    if cfg.kind == "images":
        names = [n for n in names if n not in INTERPOLATING]
    return sorted(set(names), key=BALANCERS.index)


def candidate_rows(silver: DataFrame, cfg: PipelineConfig, folds: int, names: list[str]) -> tuple[DataFrame, dict]:
    """Every candidate's gold-contract rows with its name in ``level`` (and ``u`` = 0: no fraction is cut);
    the builds' info by candidate."""
    from jobs.balancing import oversample

    parts, infos = [], {}
    for name in names:
        method = "none" if name in ("none", "class_weight") else name
        if method not in infos:
            update = {"method": method} if method != "none" else {"method": "none", "undersample": None}
            c = cfg.model_copy(update={"oversample": cfg.oversample.model_copy(update=update)})
            rows, infos[method] = oversample.build_gold(silver, c, folds)
            infos[method]["rows"] = rows
        parts.append(infos[method]["rows"].withColumn("level", F.lit(name)))
    table = parts[0]
    for more in parts[1:]:
        table = table.unionByName(more)
    return table.withColumn("u", F.lit(0.0)), {n: infos["none" if n in ("none", "class_weight") else n] for n in names}


CLEAR_SE = 2.0  # a difference between two trainings counts when it is more than this many standard errors


def paired(base: list | None, other: list | None) -> tuple[float, float, int]:
    """(mean, standard error, count) of the per-fold differences ``other - base`` over the folds both scored.

    The standard error is that of Nadeau and Bengio's corrected resampled t-test (Machine Learning 52, 2003):
    the k folds' training sets share most of their rows, so their differences are correlated and the plain
    ``sd / sqrt(k)`` understates the error; with validation rows a ``1/(k-1)`` share of the training rows
    the variance of the mean is ``sd² (1/k + 1/(k-1))``."""
    pairs = [v - b for b, v in zip(base or [], other or [], strict=False)
             if b is not None and v is not None and not (math.isnan(b) or math.isnan(v))]  # fmt: skip
    if not pairs:
        return float("nan"), float("inf"), 0
    k = len(pairs)
    se = float(np.std(pairs, ddof=1) * math.sqrt(1 / k + 1 / (k - 1))) if k > 1 else float("inf")
    return float(np.mean(pairs)), se, k


def clear_gain(diff: float, se: float, tolerance: float) -> bool:
    """Does a paired difference show a real gain: above ``tolerance`` and more than ``CLEAR_SE`` errors above 0."""
    return diff > tolerance + 1e-12 and diff - CLEAR_SE * se > 0


def gain_text(vs_none: dict | None, long: bool = False) -> str:
    """A candidate's paired difference from ``none``: ``+0.012 ± 0.020`` (``long``: with the folds)."""
    if not vs_none:
        return ""
    if not vs_none["folds"]:
        return "not measured on the same folds"
    se = f"{vs_none['se']:.3f}" if vs_none["se"] is not None else "∞"
    return f"{vs_none['diff']:+.3f} ± {se}" + (f" standard error over {vs_none['folds']} folds" if long else "")


def _versus(base: dict, other: dict) -> dict:
    """``other``'s paired per-fold difference from ``base``: mean, corrected standard error, folds (JSON-safe)."""
    diff, se, n = paired(base.get("folds"), other.get("folds"))
    return {"diff": diff if n else None, "se": se if math.isfinite(se) else None, "folds": n}


def pick(rows: list[dict], tolerance: float) -> tuple[str, str]:
    """(the chosen candidate, why) from each candidate's ``name``, ``mean`` metric, per-fold ``folds`` and
    ``brier`` (in the order of simplicity). The candidate with the best mean leads; another is tied with it
    unless the leader beats it clearly (``clear_gain`` of their paired per-fold difference: above ``tolerance``
    and two corrected standard errors; less is what two trainings on different rows show by chance, and
    without per-fold scores the means' difference against ``tolerance`` decides). The tie goes to the lowest
    mean Brier score (calibration), then to the simplest. Each candidate but ``none`` gains ``vs_none``, its
    paired difference from ``none``, for the tables."""
    scored = [r for r in rows if not math.isnan(r["mean"])]
    if not scored:
        return "none", "no candidate could be scored: no resampling"
    base = next((r for r in scored if r["name"] == "none"), None)
    for r in scored:
        if base is not None and r is not base:
            r["vs_none"] = _versus(base, r)
    leader = max(scored, key=lambda r: r["mean"])  # the first of equal means: the simplest
    tied = []
    for r in scored:
        diff, se, n = paired(r.get("folds"), leader.get("folds"))
        if not n:
            diff, se = leader["mean"] - r["mean"], 0.0
        if r is leader or not clear_gain(diff, se, tolerance):
            tied.append(r)
    if len(tied) == 1:
        why = f"the highest mean {leader['mean']:.3f}, clearly above every other candidate"
    else:
        brier = min(r["brier"] for r in tied)
        calibrated = [r for r in tied if r["brier"] <= brier + 1e-12]
        leader = calibrated[0]
        why = (f"{', '.join(r['name'] for r in tied)}: no clear difference from the best mean "
               f"{max(r['mean'] for r in tied):.3f} (a difference must exceed {tolerance:g} and {CLEAR_SE:g} "
               f"corrected standard errors of the paired per-fold differences), so the lowest Brier score "
               f"({leader['brier']:.4f})")  # fmt: skip
        if len(calibrated) > 1:
            why += ", then the simplest"
    if "vs_none" in leader and leader["vs_none"]["folds"]:
        why += f"; against none {gain_text(leader['vs_none'], long=True)}"
    return leader["name"], why


def summarise(trials: list[dict], names: list[str], metric: str) -> list[dict]:
    """Per candidate: mean and std of the metric over the folds, mean Brier and ECE, mean training rows."""
    out = []
    for name in names:
        mine = [t for t in trials if t["level"] == name]
        values = np.array([t["metrics"].get(metric, float("nan")) for t in mine], dtype=float)
        mean = float(np.nanmean(values)) if len(values) and not np.isnan(values).all() else float("nan")
        out.append({"name": name, "mean": mean, "std": float(np.nanstd(values)) if len(values) else float("nan"),
                    "brier": float(np.nanmean([t["metrics"].get("brier", float("nan")) for t in mine])),
                    "ece": float(np.nanmean([t["metrics"].get("ece", float("nan")) for t in mine])),
                    "train_rows": int(np.mean([t["train_rows"] for t in mine])) if mine else 0,
                    "folds": [t["metrics"].get(metric) for t in sorted(mine, key=lambda t: t["fold"])]})  # fmt: skip
    return out


def choose(spark: SparkSession, cfg: PipelineConfig, run_id: str, silver: DataFrame, silver_version: int, folds: int,
           classes: list[str], record: ledger.StageRun, stage: str) -> tuple[str, dict, DataFrame]:  # fmt: skip
    """Measure the candidates on the folds; returns (the choice, the summary, the chosen candidate's gold rows)."""
    from jobs import launch
    from jobs.balancing import oversample

    start = time.perf_counter()
    lake = tables.Lake(cfg.lake_dir)
    names = candidates(cfg)
    table, infos = candidate_rows(silver, cfg, folds, names)
    props = oversample.gold_properties(cfg, run_id, folds, classes, silver_version)
    props.update({"fulcrum.tradeoff_levels": json.dumps(names), "fulcrum.oversample": "auto"})
    path = lake.path("balance/candidates")
    version = tables.overwrite(table, path, run_id, stage, props)
    record.outputs.append(("balance/candidates", path, version))
    out = str(Path(cfg.reports_dir) / run_id / "balance")
    train = cfg.train.tuned(tensorboard=False, search=None)
    args = launch.grid_args(path, version, out, train, names, list(range(folds)), weighted=["class_weight"])
    log.info("oversample %s: measuring %s on %d folds", cfg.dataset, ", ".join(names), folds)
    grid = launch.grid(cfg, run_id, args, out, "measuring the balancing candidates",
                       "see the message above, or set oversample.method to one method")  # fmt: skip
    metric = cfg.oversample.metric
    rows = summarise(grid["trials"], names, metric)
    chosen, why = pick(rows, cfg.oversample.tolerance)
    summary = {"metric": metric, "tolerance": cfg.oversample.tolerance, "candidates": rows, "chosen": chosen,
               "reason": why, "table_version": version, "seconds": round(time.perf_counter() - start, 2),
               "fallback": infos[chosen]["fallback"], "plan": infos[chosen]["plan"]}  # fmt: skip
    log.info("oversample %s: auto chose %s (%s)", cfg.dataset, chosen, why)
    gold = tables.read(spark, path, version).where(F.col("level") == chosen).drop("level", "u")
    return chosen, summary, gold
