"""What the label audit's verdicts should do by default: drop, relabel, or only report.

Data the code was not tuned on: four datasets bundled with scikit-learn (wine, breast cancer,
digits, iris: 2 to 10 classes, 4 to 64 features), none of them fulcrum's samples. Per dataset
and seed, 30 % is held out clean; in the rest a share of the labels (10 %, 20 %) is flipped to
another class at random. Out-of-fold probabilities of a standardised logistic regression
(5 folds) go through fulcrum's own audit on Spark (``jobs.analysis.audit.audit``: confident
learning, the skill bar and the noise-rate cap, default settings); its actionable verdicts are
then dropped, relabelled to the suggested class, or ignored (``report``), and an independent
classifier (the same logistic regression) trained on each result is scored (macro-F1) on the
held-out clean rows, beside the one trained on the clean labels (the ceiling).

Recovery = (policy − report) / (clean − report): the share of the damage the policy undoes.

    python tests/bench/bench_label_policy.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402

POLICIES = ("report", "drop", "relabel")


def datasets() -> dict:
    from sklearn import datasets as d

    return {"wine": d.load_wine(return_X_y=True), "breast cancer": d.load_breast_cancer(return_X_y=True),
            "digits": d.load_digits(return_X_y=True), "iris": d.load_iris(return_X_y=True)}  # fmt: skip


def model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def verdicts(spark, probs: np.ndarray, given: np.ndarray, folds: np.ndarray, k: int) -> dict[int, int]:
    """Row index → suggested class, for the audit's actionable verdicts (fulcrum's Spark audit)."""
    from pyspark.sql import functions as F

    from jobs.analysis import audit
    from jobs.config import AuditConfig

    rows = [(f"{i:06d}", int(folds[i]), int(given[i]), [float(p) for p in probs[i]]) for i in range(len(given))]
    preds = spark.createDataFrame(rows, "sample_id string, fold int, label int, probabilities array<double>")
    kept = audit.audit(preds, [str(c) for c in range(k)], AuditConfig()).kept.where(F.col("actionable"))
    return {int(r["sample_id"]): int(r["suggested_label"]) for r in kept.collect()}


def one(spark, X, y, seed: int, rate: float) -> dict:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

    rng = np.random.default_rng(seed)
    k = len(np.unique(y))
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    noisy = ytr.copy()
    flip = rng.random(len(ytr)) < rate
    noisy[flip] = (noisy[flip] + rng.integers(1, k, int(flip.sum()))) % k
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    folds = np.zeros(len(ytr), int)
    for f, (_, val) in enumerate(cv.split(Xtr, noisy)):
        folds[val] = f
    probs = cross_val_predict(model(), Xtr, noisy, cv=cv, method="predict_proba")
    found = verdicts(spark, probs, noisy, folds, k)
    idx = np.array(sorted(found), int)
    out = {"precision": float(flip[idx].mean()) if len(idx) else float("nan"),
           "recall": float(flip[idx].sum() / max(flip.sum(), 1))}  # fmt: skip
    for policy in POLICIES:
        Xp, yp = Xtr, noisy.copy()
        if policy == "drop":
            keep = np.ones(len(yp), bool)
            keep[idx] = False
            Xp, yp = Xtr[keep], yp[keep]
        elif policy == "relabel":
            yp[idx] = [found[i] for i in idx]
        out[policy] = f1_score(yte, model().fit(Xp, yp).predict(Xte), average="macro")
    out["clean"] = f1_score(yte, model().fit(Xtr, ytr).predict(Xte), average="macro")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    spark = build_spark(SparkConfig(master="local[2]", shuffle_partitions=2, app_name="bench-label-policy"))
    rows, wins = [], {p: 0 for p in POLICIES}
    for rate in (0.1, 0.2):
        for name, (X, y) in datasets().items():
            runs = [one(spark, X, y, s, rate) for s in range(args.seeds)]
            m = {key: float(np.nanmean([r[key] for r in runs])) for key in runs[0]}
            gap = m["clean"] - m["report"]
            rec = {p: (m[p] - m["report"]) / gap if gap > 1e-9 else float("nan") for p in ("drop", "relabel")}
            wins[max(POLICIES, key=lambda p: m[p])] += 1
            rows.append([name, f"{rate:.0%}", round(m["precision"], 3), round(m["recall"], 3), round(m["report"], 3),
                         round(m["drop"], 3), round(m["relabel"], 3), round(m["clean"], 3), round(rec["drop"], 2),
                         round(rec["relabel"], 2)])  # fmt: skip
    spark.stop()
    report("label_policy", f"label audit verdicts: held-out macro-F1 of a logistic regression, mean of {args.seeds} "
           "seeds (recovery = share of the noise's damage undone)",
           ["dataset", "noise", "audit precision", "audit recall", "report (raw)", "drop", "relabel", "clean labels",
            "recovery drop", "recovery relabel"], rows, {"best_policy_counts": wins})  # fmt: skip


if __name__ == "__main__":
    main()
