"""Label audit quality and speed.

1. On both samples, with the injection log as ground truth: the pipeline runs through
   train (cross-validation on Ray writes the out-of-fold predictions), then each of the
   three confident-learning methods flags rows; precision and recall of the flagged rows
   against the injected label flips that reached the predictions, beside the naive peer
   (flag every row whose most probable class is not its given label) on the same
   predictions, and the precision of the ranking's first |flips| rows.
2. Generated predictions (K classes, a known share of labels flipped): audit seconds and
   rows/s on Spark, beside the same confident joint computed in NumPy on one machine,
   with the flagged rows checked identical.
3. Where cleanlab is installed (AGPL-3.0, not a dependency): each method's flags beside cleanlab's
   ``find_label_issues`` on the same generated probabilities (3, 10 and 20 classes).

    python tests/bench/bench_audit.py [--epochs 20] [--rows 2000000] [--only-cleanlab]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402

METHODS = ("prune_by_noise_rate", "prune_by_class", "confident_joint")


def _pr(hit: int, found: int, truth: int) -> tuple[float | str, float | str]:
    return (round(hit / found, 3) if found else "-", round(hit / truth, 3) if truth else "-")


def sample_quality(spark, tmp: Path, epochs: int) -> list[list]:
    from pyspark.sql import functions as F

    from jobs import pipeline
    from jobs.analysis import audit
    from jobs.config import AuditConfig, load_config
    from jobs.lakehouse import tables
    from jobs.samples import make_samples

    rows = []
    for path in make_samples(tmp / "samples", seed=7):
        overrides = {"train.epochs": epochs, "train.patience": epochs, "train.search": None}  # fixed hyperparameters
        if "digits" in path.name:  # an MLP on the 16×16 pixels: a CPU learns it in minutes, ResNet-18 does not
            overrides.update({"train.model": "mlp", "train.hidden": [128, 64]})
        cfg = load_config(path, overrides)
        start = time.perf_counter()
        pipeline.run_pipeline(spark, cfg, "bench", pipeline.select_stages(until="train"))
        train_s = time.perf_counter() - start
        lake = tables.Lake(cfg.lake_dir)
        injected = [json.loads(x) for x in (path.parent / "injections.jsonl").read_text().splitlines()]
        flips = {e["record_id"] for e in injected if e["kind"] == "label_flip"}
        ids = {r[0]: r[1] for r in tables.read(spark, lake.path("bronze")).select("sample_id", cfg.columns.id).collect()}
        preds = tables.read(spark, lake.path("predictions")).cache()
        scored = {ids[r[0]] for r in preds.select("sample_id").collect()}
        truth = flips & scored
        classes = json.loads(tables.properties(spark, lake.path("gold"))["fulcrum.classes"])
        acc = preds.select(F.avg((F.array_position("probabilities", F.array_max("probabilities")) - 1 ==
                                  F.col("label")).cast("double"))).first()[0]  # fmt: skip
        naive = {ids[r[0]] for r in preds.where(F.array_position("probabilities", F.array_max("probabilities")) - 1
                                                != F.col("label")).select("sample_id").collect()}  # fmt: skip
        rows.append([cfg.dataset, "naive: argmax ≠ given", len(truth), len(naive), len(naive & truth),
                     *_pr(len(naive & truth), len(naive), len(truth)), "-", "-"])  # fmt: skip
        for method in METHODS:
            t0 = time.perf_counter()
            issues = audit.audit(preds, classes, AuditConfig(method=method)).kept
            flagged = [(ids[r[0]], r[1]) for r in issues.select("sample_id", "score").collect()]
            seconds = time.perf_counter() - t0
            found = {r for r, _ in flagged}
            top = {r for r, _ in sorted(flagged, key=lambda x: x[1])[: len(truth)]}
            rows.append([cfg.dataset, method, len(truth), len(found), len(found & truth),
                         *_pr(len(found & truth), len(found), len(truth)),
                         round(len(top & truth) / len(truth), 3) if truth else "-", round(seconds, 1)])  # fmt: skip
        print(f"{cfg.dataset}: pipeline through train {train_s:.0f} s, out-of-fold accuracy {acc:.3f}, "
              f"{len(flips)} flips injected, {len(truth)} reached the predictions")  # fmt: skip
        preds.unpersist()
    return rows


def generated(rows: int, k: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted probabilities of a decent classifier, labels with a share flipped, and the flip mask."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, rows)
    logits = rng.normal(0, 1, (rows, k)).astype(np.float32)
    logits[np.arange(rows), true] += 2.5
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    flip = rng.random(rows) < noise
    given = np.where(flip, (true + rng.integers(1, k, rows)) % k, true)
    return probs.astype(np.float32), given, flip


def numpy_confident_joint(probs: np.ndarray, given: np.ndarray, k: int) -> np.ndarray:
    """The ``confident_joint`` method on one machine: the rows labelled i confidently in j ≠ i, less those whose
    given label is the model's most probable class (cleanlab drops them too)."""
    thresholds = np.array([probs[given == j, j].mean() for j in range(k)])
    above = probs >= thresholds - 1e-6
    confident = np.where(above.any(1), np.where(above, probs, -1).argmax(1), -1)
    return np.flatnonzero((confident >= 0) & (confident != given) & (probs.argmax(1) != given))


def against_cleanlab(spark, sizes=((3, 3000), (10, 5000), (20, 4000)), noise: float = 0.1) -> list[list]:
    """Each method's flags beside cleanlab's ``find_label_issues`` (the library that defines confident learning)
    on the same generated probabilities. cleanlab is AGPL-3.0 and not a fulcrum dependency: this part runs only
    where it is installed (``pip install cleanlab``)."""
    from cleanlab.filter import find_label_issues

    from jobs.analysis import audit
    from jobs.config import AuditConfig

    out = []
    for k, rows in sizes:
        probs, given, flip = generated(rows, k, noise, seed=k)
        probs = probs.astype(np.float64)
        probs /= probs.sum(1, keepdims=True)
        preds = spark.createDataFrame([(str(i), 0, int(y), p.tolist()) for i, (y, p) in enumerate(zip(given, probs, strict=True))],
                                      "sample_id string, fold int, label int, probabilities array<double>")  # fmt: skip
        truth = set(np.flatnonzero(flip).tolist())
        for method in ("prune_by_noise_rate", "prune_by_class", "confident_joint"):
            issues = audit.audit(preds, [str(c) for c in range(k)], AuditConfig(method=method)).kept
            ours = {int(r[0]) for r in issues.select("sample_id").collect()}
            filter_by = "confident_learning" if method == "confident_joint" else method
            theirs = set(np.flatnonzero(find_label_issues(given, probs, filter_by=filter_by, n_jobs=1)).tolist())
            out.append([k, rows, method, len(ours), len(theirs), len(ours & theirs), len(ours - theirs),
                        len(theirs - ours), *_pr(len(ours & truth), len(ours), len(truth)),
                        *_pr(len(theirs & truth), len(theirs), len(truth))])  # fmt: skip
    return out


def scale(spark, tmp: Path, rows: int, k: int = 10, noise: float = 0.1) -> list[list]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from jobs.analysis import audit
    from jobs.config import AuditConfig

    probs, given, flip = generated(rows, k, noise)
    table = pa.table({"sample_id": pa.array([f"{i:012d}" for i in range(rows)]),
                      "fold": pa.array(np.arange(rows) % 5, pa.int32()), "label": pa.array(given, pa.int32()),
                      "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), k).cast(
                          pa.list_(pa.float32()))})  # fmt: skip
    path = tmp / "preds.parquet"
    pq.write_table(table, path, row_group_size=250_000)
    truth = set(np.flatnonzero(flip).tolist())

    t0 = time.perf_counter()
    expected = numpy_confident_joint(probs, given, k)
    numpy_s = time.perf_counter() - t0
    out = []
    preds = spark.read.parquet(str(path))
    for method in ("confident_joint", "prune_by_noise_rate"):
        t0 = time.perf_counter()
        issues = audit.audit(preds, [str(c) for c in range(k)], AuditConfig(method=method)).kept
        found = {int(r[0]) for r in issues.select(F.col("sample_id").cast("long")).collect()}
        seconds = time.perf_counter() - t0
        same = "-" if method != "confident_joint" else (
            "identical" if found == set(expected.tolist()) else f"differs ({len(found ^ set(expected.tolist()))})")
        out.append([f"fulcrum {method} (Spark local[*])", rows, round(seconds, 1), int(rows / seconds),
                    len(found), *_pr(len(found & truth), len(found), len(truth)), same])  # fmt: skip
    hit = len(set(expected.tolist()) & truth)
    out.append(["NumPy confident joint, in memory", rows, round(numpy_s, 2), int(rows / numpy_s), len(expected),
                *_pr(hit, len(expected), len(truth)), "(reference)"])  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per fold on the samples")
    parser.add_argument("--rows", type=int, default=2_000_000, help="generated prediction rows (0: skip)")
    parser.add_argument("--only-cleanlab", action="store_true", help="only the comparison with cleanlab")
    args = parser.parse_args()

    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    spark = build_spark(SparkConfig(master="local[*]", driver_memory="6g"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        try:
            import cleanlab  # noqa: F401
        except ImportError:
            print("cleanlab is not installed: its comparison is skipped (pip install cleanlab; AGPL-3.0, not a "
                  "fulcrum dependency)")  # fmt: skip
        else:
            report("audit_cleanlab", "fulcrum's confident learning (Spark) against cleanlab's find_label_issues, "
                   "same generated probabilities (10 % of labels flipped)",
                   ["classes", "rows", "method", "fulcrum flagged", "cleanlab flagged", "both", "only fulcrum",
                    "only cleanlab", "fulcrum precision", "fulcrum recall", "cleanlab precision", "cleanlab recall"],
                   against_cleanlab(spark), {"cleanlab": cleanlab.__version__})  # fmt: skip
        if args.only_cleanlab:
            return
        quality = sample_quality(spark, tmp, args.epochs)
        report("audit_samples", f"Label audit on the samples ({args.epochs} epochs, 5-fold out-of-fold predictions) "
               "against the injected label flips",
               ["dataset", "flagged by", "flips scored", "flagged", "true flips flagged", "precision", "recall",
                "precision of first |flips| by score", "seconds"], quality, {"epochs": args.epochs})  # fmt: skip
        if args.rows:
            speed = scale(spark, tmp, args.rows)
            report("audit_scale", f"Label audit of {args.rows:,} generated prediction rows (10 classes, 10 % flipped)",
                   ["engine", "rows", "seconds", "rows/s", "flagged", "precision", "recall", "flags vs NumPy"],
                   speed)  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
