"""Label audit: confident learning over the out-of-fold predictions, as Spark aggregations.

Confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70, 2021) finds likely label errors from
out-of-sample predicted probabilities p̂ and the given labels alone:

1. per-class thresholds ``t_j``: the mean of p̂_j over the rows labelled j;
2. the confident joint ``C[i][j]``: rows labelled i whose confident class is j, the class
   with the largest p̂_l among those with p̂_l ≥ t_l (a row with none is not counted);
3. the calibrated joint ``Q``: each row of C rescaled to the number of rows labelled i,
   then normalised to sum to 1, so Q[i][j] estimates P(given = i, true = j);
4. the noise matrix P(given = i | true = j) = Q[i][j] / Σ_i Q[i][j];
5. the rows flagged: ``prune_by_noise_rate`` (for each off-diagonal (i, j), the
   n·Q[i][j] rows labelled i with the largest margin p̂_j − p̂_i, each row of n·Q rounded
   so that its total is kept, as cleanlab rounds it), ``prune_by_class`` (for each class i,
   the n·Σ_{j≠i} Q[i][j] rows labelled i with the lowest p̂_i) or ``confident_joint`` (the
   off-diagonal rows of C); at least one row of every class is left unflagged, and, as in
   cleanlab, no row whose given label is the model's most probable class;
6. each flagged row scored by its self-confidence p̂_given or its normalised margin
   p̂_given − max_{j≠given} p̂_j (lower: more likely wrong), with the suggested label
   argmax_{j≠given} p̂_j.

The per-row work (thresholds, argmax, margins, top-n per cell) runs on the executors;
only K thresholds and the K×K confident joint reach the driver.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import plots
from jobs.config import AuditConfig, PipelineConfig
from jobs.errors import ConfigError, DataFailedError
from jobs.lakehouse import ledger, tables
from jobs.lakehouse.metrics import RECORDER, as_rows
from jobs.lakehouse.ranks import rank_within
from jobs.stage import StageReport, StageResult
from training.contract import write_json

log = logging.getLogger(__name__)

STAGE = "audit"
TOLERANCE = 1e-6  # p̂ ≥ t − 1e-6 counts as above the threshold, so a mean equal to every value still counts


@dataclass
class Estimate:
    """What confident learning estimates about a dataset's labels (lists, so it serialises as JSON)."""

    classes: list[str]
    counts: list[int]  # rows per given label
    thresholds: list[float]
    confident_joint: list[list[int]]
    joint: list[list[float]]  # calibrated, sums to 1: P(given = i, true = j)
    noise_matrix: list[list[float]]  # P(given = i | true = j), columns sum to 1
    noise_rate: list[float]  # P(true != i | given = i), per given class
    prune_counts: list[list[int]]  # rows to flag per (given i, suggested j) for prune_by_noise_rate


def calibrate(confident: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The calibrated joint: each row of C scaled to that class's row count, the whole normalised to 1."""
    totals = confident.sum(axis=1, keepdims=True)
    scaled = np.divide(confident * counts[:, None], totals, out=np.zeros(confident.shape), where=totals > 0)
    return scaled / scaled.sum() if scaled.sum() > 0 else scaled


def noise_matrix(joint: np.ndarray) -> np.ndarray:
    """P(given = i | true = j): the joint's columns normalised."""
    col = joint.sum(axis=0, keepdims=True)
    return np.divide(joint, col, out=np.zeros(joint.shape), where=col > 0)


def round_row_totals(x: np.ndarray) -> np.ndarray:
    """Each row rounded to integers that add up to its own rounded total (cleanlab's
    ``round_preserving_row_totals``): every cell to the nearest integer, then the units still missing go to the
    cells with the largest remainders (or the surplus comes off those with the smallest). Rounding each cell on
    its own loses the many small off-diagonal cells of a many-class joint: 89 rows instead of 97 on 10 classes."""
    out = np.rint(x)
    for i, row in enumerate(np.asarray(x, dtype=float)):
        diff = int(np.rint(row.sum()) - out[i].sum())
        if diff:
            order = np.argsort(row - out[i], kind="stable")
            out[i, order[::-1][:diff] if diff > 0 else order[:-diff]] += np.sign(diff)
    return out.astype(int)


def prune_counts(joint: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """n·Q[i][j] off the diagonal, each row of n·Q rounded to keep its total (``round_row_totals``), cut so that
    every class keeps at least one row."""
    n = counts.sum()
    cells = round_row_totals(joint * n)
    np.fill_diagonal(cells, 0)
    for i, total in enumerate(cells.sum(axis=1)):
        room = max(int(counts[i]) - 1, 0)
        if total > room:  # scale down, largest cells first, to keep one row of the class
            cells[i] = np.floor(cells[i] * room / total).astype(int)
    return cells


def estimate(classes: list[str], counts: np.ndarray, thresholds: np.ndarray, confident: np.ndarray) -> Estimate:
    joint = calibrate(confident, counts)
    given = joint.sum(axis=1)
    rate = np.divide(given - np.diag(joint), given, out=np.zeros(len(given)), where=given > 0)
    return Estimate(classes=list(classes), counts=counts.astype(int).tolist(), thresholds=thresholds.tolist(),
                    confident_joint=confident.astype(int).tolist(), joint=joint.tolist(),
                    noise_matrix=noise_matrix(joint).tolist(), noise_rate=rate.tolist(),
                    prune_counts=prune_counts(joint, counts).tolist())  # fmt: skip


def _p(label: Column) -> Column:
    """p̂ of the class index ``label`` (0-based) from the ``probabilities`` array."""
    return F.element_at("probabilities", label + 1)


def with_scores(preds: DataFrame) -> DataFrame:
    """Adds self_confidence, normalized_margin and the suggested label (argmax of the other classes)."""
    others = F.transform("probabilities", lambda p, i: F.when(i == F.col("label"), F.lit(-1.0)).otherwise(p))
    best_other = F.array_max(others)
    return (preds.withColumn("self_confidence", _p(F.col("label")))
            .withColumn("normalized_margin", F.col("self_confidence") - best_other)
            .withColumn("suggested_label", (F.array_position(others, best_other) - 1).cast("int")))  # fmt: skip


def confident_labels(scored: DataFrame, thresholds: list[float]) -> DataFrame:
    """Adds ``confident_label``: the largest p̂_j among the classes at or above their threshold (else null)."""
    t = F.array(*[F.lit(float(x) - TOLERANCE) for x in thresholds])
    above = F.transform("probabilities", lambda p, i: F.when(p >= F.element_at(t, i + 1), p).otherwise(F.lit(-1.0)))
    best = F.array_max(above)
    return scored.withColumn("confident_label", F.when(best >= 0, (F.array_position(above, best) - 1).cast("int")))


def thresholds_and_counts(scored: DataFrame, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class mean self-confidence, row count and rows the model's top class gets right, in one aggregation."""
    top = _predicted()
    rows = scored.groupBy("label").agg(F.avg("self_confidence").alias("t"), F.count(F.lit(1)).alias("n"),
                                       F.count_if(top == F.col("label")).alias("right")).collect()  # fmt: skip
    thresholds, counts = np.full(k, np.inf), np.zeros(k, dtype=int)  # a class with no row is never confident
    right = np.zeros(k, dtype=int)
    for r in rows:
        thresholds[r["label"]], counts[r["label"]], right[r["label"]] = r["t"], r["n"], r["right"]
    return thresholds, counts, right


def skill(counts: np.ndarray, right: np.ndarray) -> dict:
    """How far the out-of-fold model is from a trivial one: its balanced accuracy (mean recall over the
    classes present) on the given labels, and that as a share of the way from chance (1 / classes: what
    predicting the prior or a constant scores) to perfect."""
    present = counts > 0
    balanced = float(np.mean(right[present] / counts[present]))
    chance = 1.0 / int(present.sum())
    return {"balanced_accuracy": round(balanced, 4), "chance": round(chance, 4),
            "skill": round((balanced - chance) / (1.0 - chance), 4)}  # fmt: skip


def count_joint(labelled: DataFrame, k: int) -> np.ndarray:
    confident = np.zeros((k, k), dtype=int)
    for r in labelled.where(F.col("confident_label").isNotNull()).groupBy("label", "confident_label").count().collect():
        confident[r["label"], r["confident_label"]] = r["count"]
    return confident


def _top(df: DataFrame, keys: list[str], order: Column, ascending_unit: Column, limit: Column) -> DataFrame:
    """The first ``limit`` rows of each ``keys`` group by ``order`` (ties by sample_id). ``ascending_unit``
    grows along ``order`` within [0, 1]: its 1,024 steps cut each group into ranges that are ranked on
    their own (``rank_within``), so no task holds a whole class."""
    bucket = F.least(F.greatest(F.floor(ascending_unit * 1024), F.lit(0)), F.lit(1023)).cast("long")
    return rank_within(df, keys, bucket, [order, F.col("sample_id")], limit=limit).drop("_rank")


def _predicted() -> Column:
    """The out-of-fold model's class: the first index of the largest p̂ (NumPy's ``argmax``)."""
    return F.array_position("probabilities", F.array_max("probabilities")) - 1


def flag(labelled: DataFrame, est: Estimate, method: str) -> DataFrame:
    """The sample ids flagged by ``method`` (see the module docstring); as in cleanlab, a row whose given label is
    the model's own prediction is never flagged."""
    return _flag(labelled, est, method).where(_predicted() != F.col("label"))


def _flag(labelled: DataFrame, est: Estimate, method: str) -> DataFrame:
    k = len(est.classes)
    cells = np.asarray(est.prune_counts)
    if method == "confident_joint":
        return labelled.where(F.col("confident_label").isNotNull() & (F.col("confident_label") != F.col("label")))
    if method == "prune_by_class":
        per_class = F.array(*[F.lit(int(x)) for x in cells.sum(axis=1)])
        return _top(labelled, ["label"], F.col("self_confidence").asc(), F.col("self_confidence"),
                    F.element_at(per_class, F.col("label") + 1))  # fmt: skip
    flat = F.array(*[F.lit(int(x)) for x in cells.reshape(-1)])  # prune_by_noise_rate
    cell = F.col("label") * k + F.col("_class")
    pairs = (labelled.select("sample_id", "label", "probabilities", F.posexplode("probabilities").alias("_class", "_p"))
             .where((F.col("_class") != F.col("label")) & (F.element_at(flat, cell + 1) > 0))
             .withColumn("_margin", F.col("_p") - _p(F.col("label"))))  # fmt: skip
    chosen = _top(pairs, ["label", "_class"], F.col("_margin").desc(), (1 - F.col("_margin")) / 2,
                  F.element_at(flat, cell + 1))  # fmt: skip
    return labelled.join(chosen.select("sample_id").distinct(), "sample_id", "left_semi")


def audit(preds: DataFrame, classes: list[str], cfg: AuditConfig) -> StageResult:
    """Out-of-fold predictions (sample_id, fold, label, probabilities) → the flagged rows and the estimate."""
    start = time.perf_counter()
    k = len(classes)
    scored = with_scores(preds)
    thresholds, counts, right = thresholds_and_counts(scored, k)
    if (counts > 0).sum() < 2:
        raise DataFailedError(f"the predictions hold {int(counts.sum())} rows of {(counts > 0).sum()} class(es); "
                              "confident learning needs at least two classes",
                              fix="train on a gold table with two or more classes (`fulcrum train CONFIG`)")  # fmt: skip
    labelled = confident_labels(scored, thresholds.tolist())
    est = estimate(classes, counts, thresholds, count_joint(labelled, k))
    names = F.array(*[F.lit(c) for c in classes])
    issues = flag(labelled, est, cfg.method).select(
        "sample_id", "fold", "label", F.element_at(names, F.col("label") + 1).alias("given_class"),
        "suggested_label", F.element_at(names, F.col("suggested_label") + 1).alias("suggested_class"),
        "self_confidence", "normalized_margin", F.col(cfg.ranking).alias("score"),
    ).withColumnRenamed("label", "given_label")  # fmt: skip
    # Knowing its limits: verdicts act only when the model clearly beats a trivial one, and no more of them
    # than the rows confident learning estimates to be mislabelled (the lowest scores first).
    fit = skill(counts, right)
    noise = max(0.0, 1.0 - float(np.trace(np.asarray(est.joint))))
    cap = int(math.ceil(noise * counts.sum() - 1e-9))
    abstained = None
    if fit["skill"] < cfg.min_skill:
        abstained = (f"the out-of-fold model's balanced accuracy {fit['balanced_accuracy']:.3f} is {fit['skill']:.2f} "
                     f"of the way from chance ({fit['chance']:.3f}) to perfect, below audit.min_skill "
                     f"{cfg.min_skill:g}: its disagreements with the labels are not evidence of wrong labels")  # fmt: skip
        issues = issues.withColumn("actionable", F.lit(False))
    else:
        issues = cap_verdicts(issues, cap, cfg.ranking)
    report = StageReport(stage=STAGE, rows_in=int(counts.sum()))
    report.details.update({"method": cfg.method, "ranking": cfg.ranking, "estimate": asdict(est), "model": fit,
                           "min_skill": cfg.min_skill, "estimated_noise_rate": round(noise, 4),
                           "cap": cap, "abstained": abstained})  # fmt: skip
    if abstained:
        log.warning("label audit abstains: %s; its flags are reported, never applied", abstained)
    report.seconds = time.perf_counter() - start
    return StageResult(kept=issues, rejected=None, report=report)


def cap_verdicts(issues: DataFrame, cap: int, ranking: str) -> DataFrame:
    """``issues`` plus ``actionable``: true for the ``cap`` lowest scores (ties by sample_id), ranked without a
    window over the whole table (``rank_within`` over 1,024 score ranges)."""
    unit = (F.col("score") + 1) / 2 if ranking == "normalized_margin" else F.col("score")
    bucket = F.least(F.greatest(F.floor(unit * 1024), F.lit(0)), F.lit(1023)).cast("long")
    return (rank_within(issues, [], bucket, [F.col("score"), F.col("sample_id")])
            .withColumn("actionable", F.col("_rank") <= cap).drop("_rank"))  # fmt: skip


def merge_issues(previous: DataFrame | None, current: DataFrame, scored: DataFrame) -> DataFrame:
    """The label_issues table after this audit (``scored``: sample_id and label of every row scored now).

    A row flagged now takes this audit's verdict; ``given_*`` stays the label it had when first
    flagged (the label its source still has), and a verdict that now suggests that same label is
    withdrawn. An earlier verdict stays when the row was not scored now (dropped because of it) or
    was scored under another label (relabelled because of it), so a drop or a relabel does not
    undo itself on the next run; it is withdrawn when the row was scored under its original label
    and not flagged.
    """
    if previous is None:
        return current
    if "actionable" not in previous.columns:  # written before audits could abstain: every verdict acted
        previous = previous.withColumn("actionable", F.lit(True))
    first = previous.select("sample_id", F.col("given_label").alias("_gl"), F.col("given_class").alias("_gc"))
    updated = (current.join(first, "sample_id", "left")
               .withColumn("given_label", F.coalesce("_gl", "given_label"))
               .withColumn("given_class", F.coalesce("_gc", "given_class")).drop("_gl", "_gc")
               .where(F.col("given_label") != F.col("suggested_label")))  # fmt: skip
    cleared = (previous.join(scored.select("sample_id", F.col("label").alias("_scored")), "sample_id")
               .where(F.col("_scored") == F.col("given_label")).select("sample_id"))  # fmt: skip
    kept = previous.join(current.select("sample_id"), "sample_id", "left_anti").join(cleared, "sample_id", "left_anti")
    return updated.unionByName(kept.select(*updated.columns))


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str, reset: bool = False, retrain: bool = True) -> StageReport:
    """Job: silver's real rows cross-validated on Ray → confident learning → label_issues (one overwrite commit),
    then the actionable verdicts applied to silver (``clean.label_issues``: one commit of silver, and of the
    quarantine for ``drop``) before oversampling reads it; audit.json and audit.png.

    The out-of-fold predictions come from models trained on real rows only (no synthetic row: none exists
    yet), on the split's folds: silver is copied into the gold contract without resampling (``audit/gold``)
    and the Ray side trains it with ``train`` (no hyperparameter search), its predictions in
    ``audit/predictions``; with ``audit.test_part`` the test part's rows are scored by a model trained on every
    non-test row (``fold = -1`` there) and judged with the others. ``retrain=False`` judges the predictions
    already there again (another method, ranking or skill bar) without training; ``reset`` starts label_issues
    afresh instead of keeping earlier verdicts (see ``merge_issues``)."""
    lake = tables.Lake(cfg.lake_dir)
    with ledger.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        start = time.perf_counter()
        s_version = tables.version(spark, lake.path("silver"))
        if s_version is None:
            raise ConfigError(f"{cfg.dataset}: silver does not exist yet", fix="run `fulcrum curate CONFIG` first")
        record.inputs.append(("silver", lake.path("silver"), s_version))
        silver = tables.read(spark, lake.path("silver"), s_version)
        trained = None
        if retrain:
            trained = train_real_rows(spark, cfg, run_id, silver, s_version, record)
        path, target = lake.path("audit/predictions"), lake.path("label_issues")
        version = tables.version(spark, path)
        if version is None:
            raise ConfigError(f"{cfg.dataset}: no out-of-fold predictions of real rows at {path}",
                              fix="run `fulcrum audit CONFIG` without --no-retrain (it trains them)")  # fmt: skip
        record.inputs.append(("audit/predictions", path, version))
        classes = json.loads(tables.properties(spark, lake.path("audit/gold")).get("fulcrum.classes", "[]"))
        preds = tables.read(spark, path, version).select("sample_id", "fold", "label", "probabilities").persist()
        try:
            width = preds.select(F.max(F.size("probabilities"))).first()[0]
            if width != len(classes):
                raise ConfigError(f"{cfg.dataset}: the predictions have {width} probabilities per row but the "
                                  f"audited table has {len(classes)} classes", fix="run `fulcrum audit CONFIG`")  # fmt: skip
            result = audit(preds, classes, cfg.audit)
            previous = None if reset or not tables.exists(spark, target) else tables.read(spark, target)
            issues = merge_issues(previous, result.kept.withColumn("audit_run_id", F.lit(run_id)), preds)
            issues = issues.localCheckpoint()  # read the old table before the overwrite replaces it
            if cfg.audit.verify and cfg.clean.label_issues != "report" and not result.report.details["abstained"]:
                checked = verify(spark, cfg, run_id, lake, issues, record)
                result.report.details["verified"] = checked
                if checked and not checked["act"]:  # this audit's verdicts are reported, not applied
                    result.report.details["abstained"] = checked["reason"]
                    log.warning("label audit %s withholds its verdicts: %s", cfg.dataset, checked["reason"])
                    issues = issues.withColumn("actionable", F.when(F.col("audit_run_id") == run_id, F.lit(False))
                                               .otherwise(F.col("actionable")))  # fmt: skip
            props = {"fulcrum.run_id": run_id, "fulcrum.classes": json.dumps(classes),
                     "fulcrum.predictions_version": version, "fulcrum.method": cfg.audit.method}  # fmt: skip
            out_version = tables.overwrite(issues, target, run_id, STAGE, props)
        finally:
            preds.unpersist()
        report = result.report
        report.details.update(_summarise(issues, run_id))
        report.details["label_issues_version"] = out_version
        record.outputs.append(("label_issues", target, out_version))
        report.details["applied"] = apply_to_silver(spark, cfg, run_id, lake, silver, issues, record)
        if trained is not None:
            report.details["model_cv"] = {m: trained["mean"][m] for m in ("accuracy", "macro_f1", "roc_auc")}
            report.details["train_seconds"] = round(trained["cv_seconds"], 2)
            report.details["cv"] = trained  # the out-of-fold models' cross-validation (cv.json), for the console
        # Rows out: the scored rows that go on (a row the verdicts dropped is quarantined as `label_issue`, and the
        # stage table's "dropped" says so); how many were flagged is in the details.
        dropped = report.details["applied"]["dropped"]
        report.dropped = {"label_issue": dropped} if dropped else {}
        report.rows_out = report.rows_in - dropped
        flagged = report.details["flagged"]
        report.details["anomalies"] = as_rows(RECORDER.check(spark, cfg, run_id, STAGE, {
            "label_issues": flagged, "label_issue_rate": flagged / max(report.rows_in, 1)}))  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.counts.update(report.counts())
        _save(report, Path(cfg.reports_dir) / run_id)
    applied = report.details["applied"]
    log.info("audit %s: %d rows scored, %d flagged now, %d in label_issues (v%d); %s in %.1fs", cfg.dataset,
             report.rows_in, report.details["flagged"], report.details["label_issues_rows"], out_version,
             f"{applied['dropped']} dropped, {applied['relabelled']} relabelled in silver" if applied["policy"] != "report"
             else "reported only (clean.label_issues: report)", report.seconds)  # fmt: skip
    return report


def judges_test_part(cfg: PipelineConfig, silver: DataFrame) -> bool:
    """Whether the audit's CV trains a final model to score the test part: ``audit.test_part`` and silver has a
    test part (``fold = -1``; none with ``split.test_fraction`` 0, where the folds alone are trained)."""
    return cfg.audit.test_part and not silver.where(F.col("fold") == -1).isEmpty()


def train_real_rows(spark: SparkSession, cfg: PipelineConfig, run_id: str, silver: DataFrame, silver_version: int,
                    record: ledger.StageRun) -> dict:  # fmt: skip
    """Silver's rows in the gold contract without resampling (``audit/gold``), cross-validated on the Ray side
    with the config's train settings minus the search (and, with ``audit.test_part``, a final model that scores
    the test part); returns its ``cv.json``."""
    from jobs import launch
    from jobs.balancing import oversample

    lake = tables.Lake(cfg.lake_dir)
    folds = int(tables.properties(spark, lake.path("silver")).get("fulcrum.folds", cfg.split.folds))
    plain = cfg.model_copy(update={"oversample": cfg.oversample.model_copy(update={"method": "none", "undersample": None})})
    version, _ = oversample.write_gold(silver, plain, run_id, silver_version, folds, lake.path("audit/gold"), STAGE)
    record.outputs.append(("audit/gold", lake.path("audit/gold"), version))
    out = str(Path(cfg.reports_dir) / run_id / "audit" / "train")
    # Confident learning reads the folds' out-of-fold predictions and (audit.test_part) the test part's, from a
    # model trained on every non-test row; without it no final model is trained.
    test = judges_test_part(cfg, silver)
    summary = launch.cross_validate(cfg, run_id, lake.path("audit/gold"), version, out,
                                    cfg.train.model_copy(update={"search": None}), label="audit CV",
                                    final_model=test, test_predictions=test,
                                    members=cfg.audit.members_for(cfg.kind))  # fmt: skip
    record.outputs.append(("audit/predictions", summary["predictions"]["path"],
                           tables.version(spark, summary["predictions"]["path"])))  # fmt: skip
    return summary


VERIFY_LEVELS = ("given", "verdicts")


def marked(gold: DataFrame, issues: DataFrame) -> DataFrame:
    """``gold`` plus ``_hit`` (an actionable verdict hits the row: a real cross-validation row that still has the
    label it was flagged with) and ``_to`` (the suggested label)."""
    act = issues.where(F.col("actionable")).select("sample_id", F.col("given_label").alias("_given"),
                                                   F.col("suggested_label").alias("_to"))  # fmt: skip
    hit = (F.col("_given").isNotNull() & (F.col("label") == F.col("_given")) & (F.col("fold") >= 0)
           & F.col("synthetic_for").isNull())  # fmt: skip
    return gold.join(act, "sample_id", "left").withColumn("_hit", F.coalesce(hit, F.lit(False))).drop("_given")


def verify_rows(gold: DataFrame, issues: DataFrame, policy: str, folds: int) -> DataFrame:
    """``audit/gold``'s rows twice in the gold contract, ``level`` ``given`` (as they are) and ``verdicts`` (the
    actionable verdicts applied as ``policy`` says: the rows they hit train no fold, and under ``relabel`` a copy
    with the suggested label trains every fold but the row's own, as a synthetic row of each). Every row still
    validates its own fold under its given label, so both levels are scored on the same rows."""
    rows = marked(gold, issues)
    every = F.array(*[F.lit(f) for f in range(folds)])
    applied = rows.withColumn("dropped_for", F.when(F.col("_hit"), every).otherwise(F.col("dropped_for")))
    parts = [gold.withColumn("level", F.lit("given")), applied.drop("_hit", "_to").withColumn("level", F.lit("verdicts"))]
    if policy == "relabel":
        copies = (rows.where("_hit").withColumn("label", F.col("_to").cast("int"))
                  .withColumn("synthetic_for", F.explode(F.filter(every, lambda f: f != F.col("fold"))))
                  .withColumn("dropped_for", F.lit(None).cast("array<int>")))  # fmt: skip
        if "synthetic_of" in gold.columns:
            copies = copies.withColumn("synthetic_of", F.col("sample_id"))
        parts.append(copies.drop("_hit", "_to").withColumn("level", F.lit("verdicts")))
    table = parts[0]
    for more in parts[1:]:
        table = table.unionByName(more)
    return table.withColumn("u", F.lit(0.0))


def decide(given: dict, verdicts: dict, tolerance: float, metric: str, share: float = 0.0,
           large_share: float = 1.0) -> tuple[bool, str]:  # fmt: skip
    """(do the verdicts act, why) from each level's ``mean``, ``std`` and per-fold ``folds`` of the metric. The
    verdicts are withheld when the mean of the paired per-fold differences is below ``-tolerance`` and either
    more than two standard errors (``auto.paired``'s corrected error) below zero (a clear loss) or larger than
    the folds' own standard deviation on the labels as given (the quality issue's bar: no stage may lower the
    score by more than one fold standard deviation; with three folds no loss is ever "clear", and an audit
    whose weak model flagged clean rows lowered the folds by 0.15 ± 0.19). A smaller, unclear loss acts:
    trainings on two row sets differ by chance (on the benchmarks the folds' differences had a standard
    deviation of 0.01 to 0.05), and dropping the audit's verdicts beat doing nothing on every dataset of
    ``bench_label_policy.py``.

    Verdicts that change more than ``large_share`` of the folds' rows (``share``) must also *raise* the mean by more
    than ``tolerance``: on the quality benchmark's image patches a CNN just over ``audit.min_skill`` flagged a third
    of the rows at precision 0.22-0.26 (47-62 flips injected), and its verdicts measured neutral (-0.014 ± 0.018,
    -0.002 ± 0.020) and were applied; where labels are this noisy, dropping them would raise the folds' scores,
    so a neutral result says the rows were mostly right. The tables' verdicts change 2-10 % of the folds' rows."""
    from jobs.balancing.auto import clear_gain, paired

    diff, se, n = paired(given.get("folds"), verdicts.get("folds"))
    if not n:
        return False, f"the verdicts could not be measured on the folds ({metric} was not scored): not applied"
    said = (f"on the folds, mean {metric} {verdicts['mean']:.3f} with the verdicts applied against "
            f"{given['mean']:.3f} on the labels as given (paired difference {diff:+.3f} ± {se:.3f} standard error "
            f"over {n} folds; audit.tolerance {tolerance:g})")  # fmt: skip
    if clear_gain(-diff, se, tolerance):  # the labels as given beat the verdicts clearly
        return False, said + ": the verdicts would make the model worse, so they are reported, not applied"
    spread = given.get("std")
    if diff < -tolerance and spread is not None and not math.isnan(spread) and -diff > spread:
        return False, (said + f": the verdicts would lower it by more than the folds' own standard deviation "
                              f"({spread:.3f}), so they are reported, not applied")  # fmt: skip
    if share > large_share and diff <= tolerance:
        return False, (said + f": they change {share:.0%} of the folds' rows, more than audit.large_share "
                              f"{large_share:g}, and a change that large acts only when it raises the folds by more "
                              "than the tolerance, so they are reported, not applied")  # fmt: skip
    return True, said


def verify(spark: SparkSession, cfg: PipelineConfig, run_id: str, lake: tables.Lake, issues: DataFrame,
           record: ledger.StageRun) -> dict | None:  # fmt: skip
    """Measure the actionable verdicts on the folds before they act (``audit.verify``): every fold of
    ``audit/gold`` trained twice in one engine run (``python -m training.tradeoff``, the train section's
    settings without the search), on the labels as given and with the verdicts applied (``verify_rows``),
    both scored on the fold's rows under their given labels. Label noise that does not depend on the
    features lowers every model's score on noisy labels alike, so the ranking of the two holds; a verdict
    list that mostly hits correct rows (a weak model's confident mistakes) makes the model worse there and is
    withheld. None when no verdict would change a row."""
    from jobs import launch
    from jobs.balancing import auto

    start = time.perf_counter()
    g_path = lake.path("audit/gold")
    props = tables.properties(spark, g_path)
    folds = int(props["fulcrum.folds"])
    gold = tables.read(spark, g_path, tables.version(spark, g_path))
    rows = marked(gold.select("sample_id", "label", "fold", "synthetic_for"), issues)
    counted = rows.where((F.col("fold") >= 0) & F.col("synthetic_for").isNull()).agg(
        F.count(F.when(F.col("_hit"), 1)).alias("hit"), F.count(F.lit(1)).alias("folds")).first()  # fmt: skip
    n = int(counted["hit"])
    if n == 0:
        return None
    share = n / max(int(counted["folds"]), 1)
    table = verify_rows(gold, issues, cfg.clean.label_issues, folds)
    path = lake.path("audit/verify")
    names = list(VERIFY_LEVELS)
    version = tables.overwrite(table, path, run_id, STAGE, {**{k: v for k, v in props.items() if k.startswith("fulcrum.")},
                               "fulcrum.run_id": run_id, "fulcrum.tradeoff_levels": json.dumps(names)})  # fmt: skip
    record.outputs.append(("audit/verify", path, version))
    out = str(Path(cfg.reports_dir) / run_id / "audit" / "verify")
    train = cfg.train.tuned(tensorboard=False, search=None)
    args = launch.grid_args(path, version, out, train, names, list(range(folds)))
    log.info("audit %s: measuring %d verdicts on %d folds", cfg.dataset, n, folds)
    grid = launch.grid(cfg, run_id, args, out, "measuring the audit's verdicts",
                       "see the message above, or set audit.verify to false")  # fmt: skip
    metric = cfg.oversample.metric
    given, verdicts = auto.summarise(grid["trials"], names, metric)
    act, why = decide(given, verdicts, cfg.audit.tolerance, metric, share, cfg.audit.large_share)
    log.info("audit %s: %s", cfg.dataset, why)
    return {"metric": metric, "tolerance": cfg.audit.tolerance, "rows": n, "share": round(share, 4),
            "large_share": cfg.audit.large_share, "given": given, "verdicts": verdicts,
            "act": act, "reason": why, "table_version": version, "seconds": round(time.perf_counter() - start, 2)}


def apply_to_silver(spark: SparkSession, cfg: PipelineConfig, run_id: str, lake: tables.Lake, silver: DataFrame,
                    issues: DataFrame, record: ledger.StageRun) -> dict:  # fmt: skip
    """The actionable verdicts applied to silver as ``clean.label_issues`` says, before oversampling reads it:
    ``drop`` quarantines the rows (``label_issue``, stage ``audit``: the next curate applies the same verdicts
    in clean and replaces these rows), ``relabel`` gives them the suggested class; ``test_part`` counts the
    changed rows of the test part (``audit.test_part``). Silver is rewritten (one commit) only when a row
    changes, so a re-run on unchanged data commits nothing."""
    from jobs.curation import clean, curate

    policy = cfg.clean.label_issues
    out = {"policy": policy, "dropped": 0, "relabelled": 0}
    if policy == "report":
        return out
    label = cfg.columns.label
    marked = clean.apply_label_issues(silver.withColumn(clean.REASONS, F.array().cast("array<string>")), cfg, issues)
    marked = marked.localCheckpoint()
    changed = (F.size(clean.REASONS) > 0) | F.col(clean.RELABELLED)
    counts = marked.agg(F.count_if(F.size(clean.REASONS) > 0).alias("dropped"),
                        F.count_if(F.col(clean.RELABELLED)).alias("relabelled"),
                        F.count_if(changed & (F.col("fold") == -1)).alias("test_part")).first()  # fmt: skip
    out.update(dropped=int(counts["dropped"]), relabelled=int(counts["relabelled"]), test_part=int(counts["test_part"]))
    if not out["dropped"] and not out["relabelled"]:
        return out
    folds = int(tables.properties(spark, lake.path("silver")).get("fulcrum.folds", cfg.split.folds))
    before = {r[0]: r[1] for r in silver.groupBy(label).count().collect()}
    after = {r[0]: r[1] for r in marked.where(F.size(clean.REASONS) == 0).groupBy(label).count().collect()}
    short = {str(c): after.get(c, 0) for c in before if after.get(c, 0) < folds}
    if short:  # a class would be left with fewer rows than folds: the split could not give every fold one
        out.update(dropped=0, relabelled=0, test_part=0, withheld=f"applying them would leave {short} rows of a "
                   f"class, fewer than the {folds} folds: nothing applied (check those classes' labels by hand)")  # fmt: skip
        log.warning("label audit %s: %s", cfg.dataset, out["withheld"])
        return out
    kept = (marked.where(F.size(clean.REASONS) == 0).withColumn(label, F.col(label).cast(dict(silver.dtypes)[label]))
            .select(*silver.columns))  # fmt: skip
    props = {k: v for k, v in tables.properties(spark, lake.path("silver")).items() if k.startswith("fulcrum.")}
    props.update({"fulcrum.run_id": run_id, "fulcrum.audit": json.dumps(out)})
    if out["dropped"]:
        gone = marked.where(F.size(clean.REASONS) > 0).select("sample_id", F.col(clean.REASONS).alias("reasons"))
        rows, _ = curate.validated_rows(spark, cfg, lake)
        none = F.lit(None).cast("string")
        quarantine = (rows.join(gone, "sample_id").withColumn("reason", F.get("reasons", 0))
                      .withColumn("dup_group", none).withColumn("duplicate_of", none)
                      .withColumn("stage", F.lit(STAGE)).withColumn("run_id", F.lit(run_id)))  # fmt: skip
        q_version = tables.replace_where(quarantine, lake.path("quarantine"), f"stage = '{STAGE}'", run_id, STAGE,
                                         partition_by="stage")  # fmt: skip
        record.outputs.append(("quarantine", lake.path("quarantine"), q_version))
    s_version = tables.overwrite(kept, lake.path("silver"), run_id, STAGE, props)
    record.outputs.append(("silver", lake.path("silver"), s_version))
    out["silver_version"] = s_version
    return out


def _summarise(issues: DataFrame, run_id: str) -> dict:
    """Counts (one aggregation) and the 20 lowest-scored rows of the written table."""
    totals = issues.agg(F.count(F.lit(1)).alias("rows"), F.count_if(F.col("audit_run_id") == run_id).alias("flagged"),
                        F.count_if(F.col("actionable")).alias("actionable")).first()  # fmt: skip
    pairs = issues.groupBy("given_class", "suggested_class").count().collect()
    top = issues.orderBy("score", "sample_id").limit(20).collect()
    return {"flagged": int(totals["flagged"]), "label_issues_rows": int(totals["rows"]),
            "actionable": int(totals["actionable"]),
            "pairs": {f"{r['given_class']} -> {r['suggested_class']}": r["count"] for r in pairs},
            "top": [{k: r[k] for k in ("sample_id", "fold", "given_class", "suggested_class", "score")} for r in top]}  # fmt: skip


def _save(report: StageReport, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json({"rows_in": report.rows_in, **report.details}, folder / "audit.json")
    plots.audit_estimate(report.details["estimate"], folder / "audit.png")
