"""Hyperparameter search on Ray Tune, scored by the mean cross-validation metric, with ASHA.

A trial is one configuration (learning rate, weight decay, dropout, batch size) drawn at
random or by Optuna's TPE (``bayesian``). It trains the split's folds together on the same
engine as the cross-validation (one pass over the rows per epoch, each fold a slot, run in
the trial's own process) and reports after every epoch the folds' mean metric (each fold
at its best epoch so far); ASHA treats an epoch as its unit of time, so after ``grace``
epochs (then ``grace × reduction``, ...) a trial whose mean is below the top
``1/reduction`` of the trials that got that far is stopped and its CPUs go to the next
one. Trials run concurrently as the cluster's resources allow (the CV driver's plan).

The best trial is the one with the highest mean over every fold among the trials that
finished them all; its configuration is what the final cross-validation and model use.
Its score was picked on the same folds, so it is optimistic (nested CV is not done). When
the search scored every fold with the training's epochs, the best trial's folds are the
cross-validation's and are not trained again; otherwise the CV trains them.

Output under ``out``: ``search.json`` (every trial: configuration, per-fold metric,
running mean, stopped early or not); ``fulcrum train`` draws it as ``search.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from training.contract import jsonio
from training.contract.settings import SearchSettings, TrainSettings
from training.cv import fold_result, load_fold, plan_resources, run_grid, save_fold, slot_config
from training.engine import cv_slots
from training.gold import Gold
from training.worker import read_error

log = logging.getLogger(__name__)
PARAMS = ("lr", "weight_decay", "dropout", "batch_size")


def space(search: SearchSettings) -> dict:
    """The Tune search space: log-uniform learning rate and weight decay, uniform dropout, a batch size."""
    from ray import tune

    def between(name: str, draw):
        lo, hi = (float(v) for v in getattr(search, name))
        return lo if lo == hi else draw(lo, hi)

    return {"lr": between("lr", tune.loguniform), "weight_decay": between("weight_decay", tune.loguniform),
            "dropout": between("dropout", tune.uniform),
            "batch_size": tune.choice(sorted(set(int(b) for b in search.batch_size)))}  # fmt: skip


def rungs(folds: int, grace: int, reduction: int) -> list[int]:
    """The folds after which ASHA compares trials (``grace × reduction^k`` below the last fold)."""
    out, t = [], grace
    while t < folds:
        out.append(t)
        t *= reduction
    return out


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a third of the search, at least 2, at most 10."""
    return max(2, min(10, trials // 3))


def searcher(search: SearchSettings, metric: str, seed: int):
    """Tune's search algorithm: seeded random draws, or Optuna's TPE seeded and started by ``startup_trials``
    (Optuna's default of 10 random start-up trials would leave a search of 10 or fewer random)."""
    from ray import tune

    if search.algorithm == "bayesian":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(search.trials))
        return OptunaSearch(metric=metric, mode="max", sampler=sampler)
    return tune.search.BasicVariantGenerator(random_state=seed)


def best_trial(trials: list[dict], folds: int) -> dict | None:
    """The trial with the highest mean over all ``folds`` among those that trained them all (first on ties)."""
    done = [t for t in trials if len(t["scores"]) == folds and not t.get("error") and not math.isnan(t["score"])]
    return max(done, key=lambda t: t["score"]) if done else None


def apply(s: TrainSettings, config: dict) -> TrainSettings:
    """TrainSettings with a trial's hyperparameters."""
    return s.tuned(lr=float(config["lr"]), weight_decay=float(config["weight_decay"]), dropout=float(config["dropout"]),
                   batch_size=int(config["batch_size"]))  # fmt: skip


def run(gold: Gold, s: TrainSettings, search: SearchSettings, out: str | Path) -> tuple[TrainSettings, dict]:
    """Run the search; returns the settings of the best trial and the summary written to ``search.json``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    search.check_folds(gold.folds)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    folds = search.folds or gold.folds
    base = s.tuned(epochs=search.epochs or s.epochs)
    use_gpu, per_worker, slots = plan_resources(base, search.trials)
    key = f"mean_{search.metric}"
    steps = rungs(base.epochs, search.grace, search.reduction) if search.asha else []
    log.info("hyperparameter search: %d %s trial(s), each %d fold(s) in one pass per epoch for up to %d epoch(s), "
             "%d at once; ASHA compares after epoch(s) %s", search.trials, search.algorithm, folds, base.epochs, slots,
             steps or "none")  # fmt: skip
    start = time.perf_counter()

    def trial(config: dict) -> None:
        from training.worker import train_slots

        where = out / "trials" / tune.get_context().get_trial_id()
        where.mkdir(parents=True, exist_ok=True)
        (where / "config.json").write_text(json.dumps(config))
        run = slot_config(gold, apply(base, config), cv_slots(gold.folds, folds), where, metric=search.metric)
        results = train_slots({**run, "use_gpu": use_gpu, "progress_run": f"search trial {_describe(config)}"},
                              report=tune.report)  # fmt: skip
        if results is None:
            raise RuntimeError(f"trial failed: {(read_error(run['error_file']) or {}).get('error')}")
        for f in range(folds):  # the trial ran to its end (not stopped by ASHA): its folds, as the CV's
            save_fold(fold_result(results[f"fold-{f}"], f), where / f"fold-{f}.json")
        tune.report(results["report"])  # the last epoch's, once its folds are saved

    algorithm = searcher(search, key, s.seed)
    scheduler = (ASHAScheduler(time_attr="training_iteration", metric=key, mode="max", max_t=base.epochs,
                               grace_period=min(search.grace, base.epochs), reduction_factor=search.reduction)
                 if search.asha else tune.schedulers.FIFOScheduler())  # fmt: skip
    metric = search.metric.replace("_", "-")

    def outcome(r: dict) -> str:
        done = r.get("epoch", -1) + 1
        return (f"mean {metric} {r.get(key, float('nan')):.3f} over {folds} fold(s) after {done} epoch(s)"
                + (", stopped early by ASHA" if r.get("active") and done < base.epochs else ""))  # fmt: skip

    grid = run_grid(trial, space(search), slots, out / "tune", "search", _describe, search.trials, start,
                    strict=False, outcome=outcome, search_alg=algorithm, scheduler=scheduler,
                    num_samples=search.trials, resources={"cpu": per_worker, "gpu": 1 if use_gpu else 0})  # fmt: skip
    trials = []
    for r in grid:
        history = r.metrics_dataframe
        where = out / "trials" / str((r.metrics or {}).get("trial_id"))
        files = [where / f"fold-{f}.json" for f in range(folds)]
        scores = [float(load_fold(f)["metrics"][search.metric]) for f in files] if all(f.is_file() for f in files) else []
        trials.append({
            "trial": (r.metrics or {}).get("trial_id"),
            "config": {p: r.config[p] for p in PARAMS}, "scores": scores,
            "running": [] if history is None or key not in history else history[key].tolist(),
            "score": float(np.nanmean(scores)) if scores and not all(map(math.isnan, scores)) else float("nan"),
            "stopped_early": bool(not r.error and not scores), "error": str(r.error) if r.error else None,
        })  # fmt: skip
    best = best_trial(trials, folds)
    if best is None:
        errors = [t["error"] for t in trials if t["error"]]
        raise RuntimeError(f"no search trial trained all {folds} folds"
                           + (f"; {len(errors)} failed, the first with: {errors[0]}" if errors else ""))  # fmt: skip
    for t in trials:
        t["best"] = t is best
    summary = {
        "algorithm": search.algorithm, "metric": search.metric, "trials": len(trials), "folds": folds,
        "epochs": base.epochs, "grace": search.grace, "reduction": search.reduction,
        "asha": search.asha, "rungs": steps, "concurrent": slots, "trainings": sum(len(t["scores"]) for t in trials),
        "stopped_early": sum(t["stopped_early"] for t in trials), "failed": sum(bool(t["error"]) for t in trials),
        "seconds": round(time.perf_counter() - start, 2),
        "best": {"config": best["config"], "score": best["score"], "dir": str(out / "trials" / best["trial"])},
        "space": {p: list(getattr(search, p)) for p in PARAMS}, "results": trials,
    }  # fmt: skip
    jsonio.dump(summary, out / "search.json")
    log.info("search done in %.0f s: best %s, mean %s %.3f over %d folds (%d of %d trials stopped early)",
             summary["seconds"], _describe(best["config"]), search.metric, best["score"], folds,
             summary["stopped_early"], len(trials))  # fmt: skip
    return apply(s, best["config"]), summary


def _describe(config: dict) -> str:
    return (f"lr {config['lr']:.2g}, weight decay {config['weight_decay']:.2g}, dropout {config['dropout']:.2f}, "
            f"batch {config['batch_size']}")  # fmt: skip
