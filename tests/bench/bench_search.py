"""Hyperparameter search: ASHA against training every trial on every fold (its peer, FIFO).

The cancer sample goes through the Spark stages to gold once; then the same random search
(same seed, so the same configurations in the same order) runs twice on local Ray: with
ASHA stopping trials between folds, and without (Tune's FIFO scheduler: every trial trains
every fold). Printed side by side: wall seconds, fold trainings, the best configuration's
mean CV metric, and whether both chose the same configuration.

    python tests/bench/bench_search.py [--trials 8] [--folds 3] [--epochs 5] [--concurrency N]
                                       [--algorithm random|bayesian]

With ``--algorithm bayesian`` both runs draw with TPE, which adapts to what it has seen, so
the two runs no longer try the same configurations; the pair then shows what ASHA's
stopping costs TPE (it sees fewer complete trials).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.common import report  # noqa: E402


def gold_table(tmp: Path, folds: int) -> str:
    from jobs import pipeline
    from jobs.config import SparkConfig, load_config
    from jobs.lakehouse import tables
    from jobs.lakehouse.session import build_spark
    from jobs.samples import make_samples

    path = make_samples(tmp / "samples", seed=7)[0]  # cancer
    cfg = load_config(path, {"split.folds": folds})
    spark = build_spark(SparkConfig(master="local[2]", shuffle_partitions=4))
    try:
        pipeline.run_pipeline(spark, cfg, "bench", pipeline.select_stages(until="oversample"))
    finally:
        spark.stop()
    return tables.Lake(cfg.lake_dir).path("gold")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=None, help="trials at once (default: what fits)")
    p.add_argument("--algorithm", choices=("random", "bayesian"), default="random",
                   help="how both runs draw trials (bayesian: TPE, which adapts to the results it sees)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)  # one line per fold of a trial and per trial
    from training import runtime
    from training.contract import SearchSettings as Search
    from training.contract import TrainSettings as Settings
    from training.gold import Gold
    from training.search import run

    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        gold = Gold.open(gold_table(tmp, args.folds))
        runtime.init_ray()
        try:
            settings = Settings(epochs=args.epochs, hidden=(64, 32), patience=args.epochs, tensorboard=False,
                                concurrency=args.concurrency)  # fmt: skip
            for asha in (True, False):
                search = Search(trials=args.trials, folds=args.folds, asha=asha, algorithm=args.algorithm)
                start = time.perf_counter()
                _, summary = run(gold, settings, search, tmp / f"search-{asha}")
                runs[asha] = {**summary, "wall_seconds": round(time.perf_counter() - start, 2)}
        finally:
            runtime.shutdown()
    for asha, name in ((True, "ASHA (fulcrum's default)"), (False, "FIFO: every trial, every fold (peer)")):
        r = runs[asha]
        rows.append([name, r["wall_seconds"], r["trainings"], r["stopped_early"], round(r["best"]["score"], 3),
                     "yes" if r["best"]["config"] == runs[not asha]["best"]["config"] else "no"])  # fmt: skip
    name = "search" + ("" if args.concurrency is None else f"-concurrency-{args.concurrency}") + (
        "" if args.algorithm == "random" else f"-{args.algorithm}")
    report(name, f"hyperparameter search on the cancer sample: {args.trials} {args.algorithm} trials × {args.folds} folds, "
           f"{args.epochs} epochs, {runs[True]['concurrent']} at once",
           ["scheduler", "seconds", "fold trainings", "stopped early", "best mean macro-F1", "same best config"], rows,
           {"trials": args.trials, "folds": args.folds, "epochs": args.epochs, "algorithm": args.algorithm,
            "runs": {str(k): {x: v for x, v in r.items() if x != "results"} for k, r in runs.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
