"""Label audit on real Spark/Delta: confident learning on literal predictions computed by hand, and on the
cancer sample trained on real Ray, against its injected label flips; clean.label_issues drop/relabel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs.analysis import audit
from jobs.config import AuditConfig
from jobs.lakehouse import tables

pytestmark = pytest.mark.spark

TWO = [  # (sample_id, label, p0): r4 and r8 look mislabelled
    ("r1", 0, 0.9), ("r2", 0, 0.8), ("r3", 0, 0.7), ("r4", 0, 0.2),
    ("r5", 1, 0.1), ("r6", 1, 0.3), ("r7", 1, 0.4), ("r8", 1, 0.95),
]  # fmt: skip
THREE = [  # a3 looks like c, b3 like a; c2 and c3 clear no threshold (t = 0.533, 0.6, 0.733)
    ("a1", 0, [0.8, 0.1, 0.1]), ("a2", 0, [0.7, 0.2, 0.1]), ("a3", 0, [0.1, 0.1, 0.8]),
    ("b1", 1, [0.1, 0.8, 0.1]), ("b2", 1, [0.2, 0.7, 0.1]), ("b3", 1, [0.6, 0.3, 0.1]),
    ("c1", 2, [0.1, 0.1, 0.8]), ("c2", 2, [0.1, 0.2, 0.7]), ("c3", 2, [0.2, 0.1, 0.7]),
]  # fmt: skip
METHODS = ("prune_by_noise_rate", "prune_by_class", "confident_joint")


def _preds(spark, rows):
    return spark.createDataFrame([(s, 0, y, p) for s, y, p in rows],
                                 "sample_id string, fold int, label int, probabilities array<double>")  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_two_classes_by_hand(spark, method):
    result = audit.audit(_preds(spark, [(s, y, [p, 1 - p]) for s, y, p in TWO]), ["a", "b"], AuditConfig(method=method))
    est = result.report.details["estimate"]
    assert est["thresholds"] == pytest.approx([0.65, 0.5625])  # (.9+.8+.7+.2)/4, (.9+.7+.6+.05)/4
    assert est["confident_joint"] == [[3, 1], [1, 3]]
    assert np.asarray(est["noise_matrix"]) == pytest.approx(np.array([[0.75, 0.25], [0.25, 0.75]]))
    assert est["prune_counts"] == [[0, 1], [1, 0]]
    rows = {r["sample_id"]: r for r in result.kept.collect()}
    assert sorted(rows) == ["r4", "r8"]
    assert (rows["r4"]["suggested_class"], rows["r8"]["suggested_class"]) == ("b", "a")
    assert rows["r4"]["score"] == pytest.approx(-0.6) and rows["r8"]["score"] == pytest.approx(-0.9)


@pytest.mark.parametrize("method", METHODS)
def test_three_classes_by_hand(spark, method):
    result = audit.audit(_preds(spark, THREE), ["a", "b", "c"], AuditConfig(method=method, ranking="self_confidence"))
    est = result.report.details["estimate"]
    assert est["thresholds"] == pytest.approx([1.6 / 3, 0.6, 2.2 / 3])
    assert est["confident_joint"] == [[2, 0, 1], [1, 2, 0], [0, 0, 1]]  # c2, c3: no class above threshold
    assert est["prune_counts"] == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]  # row c calibrated to 3 rows
    rows = {r["sample_id"]: (r["given_class"], r["suggested_class"], round(r["score"], 6)) for r in result.kept.collect()}
    assert rows == {"a3": ("a", "c", 0.1), "b3": ("b", "a", 0.3)}


TIE = [  # x: confident class b (p̂_a 0.52 under t_a = 0.684, p̂_b 0.48 over t_b = 0.4625) but the model predicts a
    ("r1", 0, [0.9, 0.1]), ("r2", 0, [0.9, 0.1]), ("r3", 0, [0.9, 0.1]), ("x", 0, [0.52, 0.48]), ("r5", 0, [0.2, 0.8]),
    ("s1", 1, [0.1, 0.9]), ("s2", 1, [0.4, 0.6]), ("s3", 1, [0.7, 0.3]), ("s4", 1, [0.95, 0.05]),
]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_a_row_whose_label_the_model_predicts_is_never_flagged(spark, method):
    result = audit.audit(_preds(spark, TIE), ["a", "b"], AuditConfig(method=method))
    est = result.report.details["estimate"]
    assert est["confident_joint"] == [[3, 2], [2, 2]] and est["prune_counts"] == [[0, 2], [2, 0]]
    # Each method picks x among the two rows labelled a it takes (largest margin p̂_b − p̂_a: r5, then x; lowest
    # p̂_a: r5, then x; the confident joint's off-diagonal), and drops it, as cleanlab's find_label_issues does:
    # it returns rows 4, 7 and 8 (r5, s3, s4) for all three methods on these probabilities.
    assert sorted(r["sample_id"] for r in result.kept.collect()) == ["r5", "s3", "s4"]


def test_the_audit_abstains_when_its_model_is_no_better_than_chance_and_caps_its_verdicts(spark):
    # TWO: balanced accuracy 0.75 on two classes, half-way from chance (the bar, 0.5): the verdicts act, up to the estimated
    # noise (1 - trace of the calibrated joint = 0.25 of 8 rows: 2).
    result = audit.audit(_preds(spark, [(s, y, [p, 1 - p]) for s, y, p in TWO]), ["a", "b"], AuditConfig())
    d = result.report.details
    assert d["model"] == {"balanced_accuracy": 0.75, "chance": 0.5, "skill": 0.5} and d["abstained"] is None
    assert d["estimated_noise_rate"] == pytest.approx(0.25) and d["cap"] == 2
    assert {r["sample_id"]: r["actionable"] for r in result.kept.collect()} == {"r4": True, "r8": True}
    # A model that has learnt nothing (probabilities unrelated to the labels) flags rows too; none may act.
    rng = np.random.default_rng(0)
    noise = [(f"n{i}", int(i % 3), rng.dirichlet([1, 1, 1]).tolist()) for i in range(300)]
    weak = audit.audit(_preds(spark, noise), ["a", "b", "c"], AuditConfig(method="confident_joint"))
    d = weak.report.details
    assert d["model"]["skill"] < 0.2 and "below audit.min_skill 0.5" in d["abstained"]
    rows = weak.kept.collect()
    assert rows and not any(r["actionable"] for r in rows)  # reported, never applied
    # The same predictions with the bar lowered: at most the estimated noise rate's rows act, lowest scores first
    # (a cap of 20 rows set by hand here, so that it binds).
    d = audit.audit(_preds(spark, noise), ["a", "b", "c"], AuditConfig(method="confident_joint", min_skill=0))
    assert d.report.details["cap"] == int(np.ceil(d.report.details["estimated_noise_rate"] * 300 - 1e-9))
    capped = audit.cap_verdicts(weak.kept.drop("actionable"), 20, "normalized_margin").collect()
    acting = sorted(r["score"] for r in capped if r["actionable"])
    assert len(acting) == 20 and acting[-1] <= min(r["score"] for r in capped if not r["actionable"])


def test_clean_applies_only_actionable_verdicts(spark):
    from jobs.config import parse_config
    from jobs.curation import clean

    cfg = parse_config({"dataset": "toy", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                        "columns": {"label": "y", "features": ["a"]}, "clean": {"label_issues": "relabel",
                                                                               "outliers": {"method": "none"}}})  # fmt: skip
    rows = spark.createDataFrame([("s1", 1.0, "cat"), ("s2", 2.0, "cat")], "sample_id string, a double, y string")
    issues = spark.createDataFrame([("s1", "cat", "dog", True), ("s2", "cat", "dog", False)],
                                   "sample_id string, given_class string, suggested_class string, actionable boolean")  # fmt: skip
    kept = {r["sample_id"]: r["y"] for r in clean.clean(rows, cfg, issues).kept.collect()}
    assert kept == {"s1": "dog", "s2": "cat"}


def test_predictions_of_one_class_are_refused(spark):
    from jobs.errors import DataFailedError

    with pytest.raises(DataFailedError, match="at least two classes"):
        audit.audit(_preds(spark, [("x", 0, [0.9, 0.1]), ("y", 0, [0.8, 0.2])]), ["a", "b"], AuditConfig())


def _injected_flips(spark, cfg) -> tuple[set[str], set[str]]:
    """Sample ids of the injected label flips, and of every row the predictions scored."""
    log = [json.loads(line) for line in (Path(cfg.base_dir) / "injections.jsonl").read_text().splitlines()]
    flipped = {e["record_id"] for e in log if e["kind"] == "label_flip"}
    lake = tables.Lake(cfg.lake_dir)
    ids = tables.read(spark, lake.path("bronze")).select("sample_id", "record_id")
    scored = {r[0] for r in tables.read(spark, lake.path("audit/predictions")).select("sample_id").collect()}
    return {r["sample_id"] for r in ids.collect() if r["record_id"] in flipped} & scored, scored


def test_the_audit_finds_most_injected_flips_on_the_sample(spark, audited):
    cfg, report = audited
    flips, scored = _injected_flips(spark, cfg)
    issues = tables.read(spark, tables.Lake(cfg.lake_dir).path("label_issues"))
    flagged = {r["sample_id"] for r in issues.collect()}
    assert len(flips) >= 8 and flagged <= scored
    hits = len(flagged & flips)
    assert hits / max(len(flagged), 1) > 0.5, (hits, len(flagged), len(flips))  # precision
    assert hits / len(flips) > 0.5, (hits, len(flagged), len(flips))  # recall: a majority of the flips
    assert report.details["flagged"] == len(flagged) and report.details["label_issues_rows"] == len(flagged)
    assert not report.dropped and report.rows_out == report.rows_in  # clean.label_issues report: nothing dropped
    folder = Path(cfg.reports_dir) / "a-1"
    assert (folder / "audit.png").stat().st_size > 0 and json.loads((folder / "audit.json").read_text())["flagged"]
    # The audit's cross-validation trains the folds and a final model that only scores the test part: every real
    # row is judged by a model that never trained on it, the test part's rows (fold -1) by the final model.
    cv = json.loads((folder / "audit" / "train" / "cv.json").read_text())
    assert len(cv["per_fold"]) == 2 and cv["final"]["test_rows"] > 0 and "test" in cv["calibration"]
    # audit.members auto on a table: three models per fold and final model in one pass, their probabilities averaged
    assert cv["members"] == 3 and cfg.audit.members == "auto"
    lake = tables.Lake(cfg.lake_dir)
    silver_test = {r[0] for r in tables.read(spark, lake.path("silver")).where("fold = -1").select("sample_id").collect()}
    preds = tables.read(spark, lake.path("audit/predictions"))
    assert {r[0] for r in preds.where("fold = -1").select("sample_id").collect()} == silver_test
    assert len(silver_test) == cv["final"]["test_rows"] and preds.count() == report.rows_in
    assert flagged & flips & silver_test  # the sample's test part holds 2 flips: one is found


def test_a_re_audit_is_idempotent_and_keeps_verdicts_of_rows_it_no_longer_scores(spark, audited):
    cfg, _ = audited
    path = tables.Lake(cfg.lake_dir).path("label_issues")
    before = {r["sample_id"]: r["suggested_class"] for r in tables.read(spark, path).collect()}
    audit.run(spark, cfg, "a-2", retrain=False)
    after = {r["sample_id"]: r["suggested_class"] for r in tables.read(spark, path).collect()}
    assert after == before
    # A flagged row that the next training no longer scores (it was dropped) keeps its verdict.
    preds = tables.Lake(cfg.lake_dir).path("audit/predictions")
    gone = sorted(before)[0]
    kept_preds = tables.read(spark, preds).where(F.col("sample_id") != gone)
    tables.overwrite(kept_preds.localCheckpoint(), preds, "t-1", "test")
    audit.run(spark, cfg, "a-3", retrain=False)
    assert gone in {r["sample_id"] for r in tables.read(spark, path).collect()}
    audit.run(spark, cfg, "a-4", reset=True, retrain=False)
    assert gone not in {r["sample_id"] for r in tables.read(spark, path).collect()}


@pytest.mark.parametrize("policy", ["drop", "relabel"])
def test_curate_drops_or_relabels_the_audited_rows(spark, audited, lake_copy, policy):
    from jobs.curation import curate

    cfg, _ = audited
    cfg = lake_copy(cfg)
    cfg = cfg.model_copy(update={"clean": cfg.clean.model_copy(update={"label_issues": policy})})
    lake = tables.Lake(cfg.lake_dir)
    issues = {r["sample_id"]: r for r in tables.read(spark, lake.path("label_issues")).collect()}
    assert issues
    report = curate.run(spark, cfg, f"c-{policy}")
    silver = {r["sample_id"]: r[cfg.columns.label] for r in tables.read(spark, lake.path("silver")).collect()}
    clean_report = report.details["stages"]["clean"]
    if policy == "drop":
        quarantined = tables.read(spark, lake.path("quarantine")).where("stage = 'clean' AND reason = 'label_issue'")
        assert {r["sample_id"] for r in quarantined.collect()} == set(issues)
        assert not set(issues) & set(silver) and report.dropped["label_issue"] == len(issues)
    else:
        assert all(silver[s] == r["suggested_class"] for s, r in issues.items() if s in silver)
        assert clean_report["labels"]["label_issues"]["relabelled"] == len(issues)
    assert any(i["name"] == "label_issues" for i in _inputs(spark, lake, f"c-{policy}"))


def _inputs(spark, lake, run_id):
    from jobs.lakehouse.ledger import history

    return history(spark, lake, run_id).first()["inputs"]


@pytest.mark.parametrize("policy", ["drop", "relabel"])
def test_the_audit_acts_on_silver_before_oversampling_reads_it(spark, audited, lake_copy, policy):
    """In one run: a row the audit flagged is never a SMOTE endpoint nor trains a fold under its given label."""
    from jobs.balancing import oversample

    cfg, _ = audited
    cfg = lake_copy(cfg)
    cfg = cfg.model_copy(update={"clean": cfg.clean.model_copy(update={"label_issues": policy}),
                                 "oversample": cfg.oversample.model_copy(update={"method": "smotenc"}),
                                 "audit": cfg.audit.model_copy(update={"verify": False})})  # measured in its own test
    lake = tables.Lake(cfg.lake_dir)
    before = tables.version(spark, lake.path("silver"))
    report = audit.run(spark, cfg, f"a-{policy}", retrain=False)
    issues = {r["sample_id"]: r for r in tables.read(spark, lake.path("label_issues")).where("actionable").collect()}
    assert issues and report.details["applied"]["policy"] == policy
    # The test part is judged too (audit.test_part): its verdicts act like the folds' rows' and are counted apart.
    assert report.details["applied"]["test_part"] == sum(r["fold"] == -1 for r in issues.values()) > 0
    label = cfg.columns.label
    silver = {r["sample_id"]: r[label] for r in tables.read(spark, lake.path("silver")).collect()}
    oversample.run(spark, cfg, f"o-{policy}")
    gold = tables.read(spark, lake.path("gold")).collect()
    real = {r["sample_id"]: r["class_name"] for r in gold if r["synthetic_for"] is None}
    made = [r for r in gold if r["synthetic_for"] is not None]
    assert made  # smotenc made rows from the (audited) silver
    if policy == "drop":
        assert report.details["applied"]["dropped"] == len(issues) and not set(issues) & (set(silver) | set(real))
        # the stage table: the rows dropped from silver are its "dropped" (not 0, as it read), the rest go on
        assert report.dropped == {"label_issue": len(issues)} and report.rows_out == report.rows_in - len(issues)
        assert not {r["synthetic_of"] for r in made} & set(issues)
        assert not {r["synthetic_with"] for r in made} & set(issues)
        quarantined = tables.read(spark, lake.path("quarantine")).where("stage = 'audit'").collect()
        assert {r["sample_id"] for r in quarantined} == set(issues)
        assert {r["reason"] for r in quarantined} == {"label_issue"}
    else:
        assert report.details["applied"]["relabelled"] == len(issues)
        assert not report.dropped and report.rows_out == report.rows_in
        assert all(silver[s] == r["suggested_class"] == real[s] for s, r in issues.items())
        source = {s: r["suggested_class"] for s, r in issues.items()}
        assert all(r["class_name"] == source[r["synthetic_of"]] for r in made if r["synthetic_of"] in source)
    assert tables.version(spark, lake.path("silver")) == before + 1  # one commit
    # Judged again: the verdicts are already in silver, so nothing changes and nothing is committed.
    again = audit.run(spark, cfg, f"a-{policy}-2", retrain=False)
    assert again.details["applied"]["dropped"] == again.details["applied"]["relabelled"] == 0
    assert tables.version(spark, lake.path("silver")) == before + 1


def _issues(spark, rows: list[tuple[str, int, int]]):
    return spark.createDataFrame([(s, g, t, True, "a-x") for s, g, t in rows],
                                 "sample_id string, given_label int, suggested_label int, actionable boolean, "
                                 "audit_run_id string")  # fmt: skip


def test_verify_rows_apply_the_verdicts_in_one_level_and_leave_the_other_as_given(spark):
    gold = spark.createDataFrame([("a", 0, 0, None, None), ("b", 1, 1, None, None), ("c", 0, 2, None, None),
                                  ("t", 0, -1, None, None), ("s", 1, 0, 2, None)],
                                 "sample_id string, label int, fold int, synthetic_for int, dropped_for array<int>")  # fmt: skip
    # a: hit; b: flagged under another label than it has now (a source fix), not hit; t: a test row, never hit
    issues = _issues(spark, [("a", 0, 1), ("b", 0, 1), ("t", 0, 1)])
    dropped = {(r["level"], r["sample_id"]): r for r in audit.verify_rows(gold, issues, "drop", 3).collect()}
    assert len(dropped) == 10 and {r["u"] for r in dropped.values()} == {0.0}
    assert dropped[("verdicts", "a")]["dropped_for"] == [0, 1, 2] and dropped[("given", "a")]["dropped_for"] is None
    assert all(dropped[("verdicts", s)]["dropped_for"] is None for s in "bcts")
    relabelled = audit.verify_rows(gold, issues, "relabel", 3).where("level = 'verdicts'").collect()
    copies = sorted((r["synthetic_for"] if r["synthetic_for"] is not None else -9, r["label"], r["fold"])
                    for r in relabelled if r["sample_id"] == "a")  # fmt: skip
    # the original (label 0) trains no fold; a copy labelled 1 trains folds 1 and 2, never its own fold 0
    assert copies == [(-9, 0, 0), (1, 1, 0), (2, 1, 0)]


def test_decide_withholds_verdicts_that_clearly_lower_the_metric_or_by_more_than_the_folds_spread():
    def level(folds):
        return {"mean": float(np.mean(folds)), "std": float(np.std(folds)), "folds": folds}

    given = level([0.80, 0.84, 0.76, 0.82, 0.78])  # the folds' own standard deviation: 0.028
    assert audit.decide(given, level([0.81, 0.85, 0.77, 0.83, 0.79]), 0.01, "macro_f1")[0]  # better
    assert audit.decide(given, level([0.795, 0.835, 0.755, 0.815, 0.775]), 0.01, "macro_f1")[0]  # within tolerance
    # 0.02 lower on average but one fold gains 0.05: the paired differences' sd is 0.04, their corrected standard
    # error 0.04 × √(1/5 + 1/4) = 0.027 (the plain 0.04/√5 would be 0.018): not clear, and within the folds' spread
    noisy = level([0.85, 0.81, 0.71, 0.79, 0.74])
    act, why = audit.decide(given, noisy, 0.01, "macro_f1")
    assert act and "paired difference -0.020 ± 0.027 standard error over 5 folds" in why
    act, why = audit.decide(given, level([0.77, 0.81, 0.73, 0.79, 0.75]), 0.01, "macro_f1")  # 0.03 lower on each
    assert not act and "0.770 with the verdicts applied against 0.800" in why and "model worse" in why
    # Three folds, two of them 0.26-0.29 lower and one 0.08 higher (an audit whose weak model flagged clean rows
    # of iris): -0.154 ± 0.189, never clear with three folds, but more than the folds' own spread (0.105)
    weak = level([0.889, 0.921, 0.683])
    act, why = audit.decide(weak, level([0.632, 0.632, 0.767]), 0.01, "macro_f1")
    assert not act and "-0.154 ± 0.189" in why and "folds' own standard deviation (0.105)" in why
    assert not audit.decide(level([float("nan")] * 5), level([0.9] * 5), 0.01, "macro_f1")[0]  # nothing scored


def test_decide_asks_verdicts_that_change_a_large_share_of_rows_to_raise_the_folds():
    """The patches' case: a third of the rows dropped, the folds neither better nor worse (-0.002 ± 0.020)."""
    def level(folds):
        return {"mean": float(np.mean(folds)), "std": float(np.std(folds)), "folds": folds}

    given = level([0.60, 0.66, 0.58, 0.64, 0.62])
    neutral = level([0.61, 0.64, 0.59, 0.63, 0.62])  # -0.002 on average
    assert audit.decide(given, neutral, 0.01, "macro_f1", share=0.09, large_share=0.2)[0]  # a table's share: acts
    act, why = audit.decide(given, neutral, 0.01, "macro_f1", share=0.33, large_share=0.2)
    assert not act and "they change 33% of the folds' rows, more than audit.large_share 0.2" in why
    assert not audit.decide(given, level([f + 0.005 for f in given["folds"]]), 0.01, "macro_f1", 0.33, 0.2)[0]  # a rise within the tolerance
    act, why = audit.decide(given, level([f + 0.02 for f in given["folds"]]), 0.01, "macro_f1", 0.33, 0.2)
    assert act and "paired difference +0.020" in why  # a clear rise: the large change acts
    assert audit.decide(given, neutral, 0.01, "macro_f1", share=0.33, large_share=1.0)[0]  # the rule switched off


def test_verdicts_are_measured_on_the_folds_before_they_act(spark, audited, lake_copy):
    """On real Ray: verdicts that relabel the rows the model is surest of make every fold worse and are
    withheld; the injected flips dropped do not, and act."""
    cfg, _ = audited
    cfg = lake_copy(cfg)
    cfg = cfg.model_copy(update={"clean": cfg.clean.model_copy(update={"label_issues": "relabel"})})
    lake = tables.Lake(cfg.lake_dir)
    from jobs.lakehouse import ledger

    # The folds' rows: verdicts on the test part train no fold, so verify does not measure them.
    preds = tables.read(spark, lake.path("audit/predictions")).where("fold >= 0").collect()
    surest = sorted(preds, key=lambda r: -r["probabilities"][r["label"]])[: len(preds) * 2 // 5]
    wrong = _issues(spark, [(r["sample_id"], r["label"], 1 - r["label"]) for r in surest])
    record = ledger.StageRun(run_id="a-v", dataset=cfg.dataset, stage="audit")
    checked = audit.verify(spark, cfg, "a-v", lake, wrong, record)
    assert checked["rows"] == len(surest) and not checked["act"], checked
    folds_rows = tables.read(spark, lake.path("audit/gold")).where("fold >= 0 AND synthetic_for IS NULL").count()
    assert checked["share"] == round(len(surest) / folds_rows, 4) and checked["large_share"] == cfg.audit.large_share
    assert checked["verdicts"]["mean"] < checked["given"]["mean"] - cfg.audit.tolerance
    assert {r[0] for r in tables.read(spark, lake.path("audit/verify")).select("level").distinct().collect()} == {
        "given", "verdicts"}
    assert ("audit/verify", lake.path("audit/verify"), checked["table_version"]) in record.outputs
    label = {r["sample_id"]: r["label"] for r in preds}
    flips = _injected_flips(spark, cfg)[0] & set(label)
    dropped = cfg.model_copy(update={"clean": cfg.clean.model_copy(update={"label_issues": "drop"})})
    right = _issues(spark, [(s, label[s], 1 - label[s]) for s in flips])
    checked = audit.verify(spark, dropped, "a-v2", lake, right, record)
    assert checked["rows"] == len(flips) and checked["act"] and checked["share"] < cfg.audit.large_share, checked
    none = audit.verify(spark, dropped, "a-v3", lake, _issues(spark, [("no-such-row", 0, 1)]), record)
    assert none is None  # nothing to measure: no training


def test_verdicts_that_would_leave_a_class_short_of_the_folds_are_withheld(spark, tmp_path):
    from jobs.config import parse_config

    cfg = parse_config({"dataset": "toy", "kind": "tabular", "lake_root": str(tmp_path / "lake"),
                        "source": {"path": "x", "format": "csv"}, "columns": {"label": "y", "features": ["a"]},
                        "split": {"folds": 2}})  # fmt: skip
    lake = tables.Lake(cfg.lake_dir)
    rows = [(f"s{i}", float(i), "big", i % 2) for i in range(8)] + [("r1", 9.0, "rare", 0), ("r2", 9.5, "rare", 1)]
    silver = spark.createDataFrame(rows, "sample_id string, a double, y string, fold int")
    tables.overwrite(silver, lake.path("silver"), "c-1", "curate", {"fulcrum.folds": 2})
    issues = spark.createDataFrame([("r1", "rare", "big", True)],
                                   "sample_id string, given_class string, suggested_class string, actionable boolean")  # fmt: skip
    before = tables.version(spark, lake.path("silver"))
    applied = audit.apply_to_silver(spark, cfg, "a-1", lake, tables.read(spark, lake.path("silver")), issues, None)
    assert applied["dropped"] == 0 and "fewer than the 2 folds" in applied["withheld"] and "'rare': 1" in applied["withheld"]
    assert tables.version(spark, lake.path("silver")) == before  # nothing committed


def test_the_test_part_is_judged_only_where_there_is_one(spark):
    from jobs.config import parse_config

    raw = {"dataset": "toy", "kind": "tabular", "lake_root": "/nowhere", "source": {"path": "x", "format": "csv"},
           "columns": {"label": "y", "features": ["a"]}}  # fmt: skip
    cfg, off = parse_config(raw), parse_config({**raw, "audit": {"test_part": False}})
    split = spark.createDataFrame([("s1", 0), ("s2", 1), ("s3", -1)], "sample_id string, fold int")
    folds_only = split.where("fold >= 0")  # split.test_fraction 0: no row has fold -1
    assert audit.judges_test_part(cfg, split) and not audit.judges_test_part(off, split)
    assert not audit.judges_test_part(cfg, folds_only)
