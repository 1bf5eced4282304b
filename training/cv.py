"""Cross-validation across the cluster: one ``TorchTrainer`` per fold, folds run concurrently.

Ray Tune runs one trial per fold (the fold is a grid parameter); each trial builds its
fold's datasets and runs a ``TorchTrainer``. How many folds run at once is computed from
the cluster's resources *before* starting — each fold holds ``workers`` workers of
``cpus_per_worker`` CPUs (or one GPU each), and a quarter of the CPUs stays free for
Ray Data — so a configuration that cannot be scheduled is refused instead of hanging.
Then the final model trains on every non-test row for the mean best epoch of the folds
and is scored once on the held-out test rows.

Outputs (under ``out``): ``cv.json`` (per-fold and mean ± std metrics, the Delta version
read, each fold's epochs, the summed confusion matrix), ``model.pt`` (final weights,
``torch.load(weights_only=True)``), and the out-of-fold predictions as a Delta table beside
gold. ``fulcrum train`` draws the figures from ``cv.json`` (the Ray side draws nothing).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from training import runtime
from training.contract.settings import METRICS, TrainSettings
from training.gold import Gold, write_predictions

log = logging.getLogger(__name__)
TRIAL_CPU = 0.01  # a fold's Tune trial only drives its trainer


def plan_concurrency(folds: int, workers: int, cpus_per_worker: float, cluster_cpus: float, gpus: float,
                     use_gpu: bool, wanted: int | None = None) -> int:  # fmt: skip
    """Folds that fit at once; raises when not even one does (so nothing can hang)."""
    budget = cluster_cpus * (1 - runtime.DATA_CPU_SHARE)
    # A fold needs its workers plus the trial and the trainer's controller (no CPU reserved for those).
    fit = math.floor(budget / (workers * cpus_per_worker) + 1e-9)
    if use_gpu:
        fit = min(fit, math.floor(gpus / workers + 1e-9))
    if fit < 1:
        need = f"{workers} GPU(s)" if use_gpu and gpus < workers else f"{workers * cpus_per_worker:g} CPUs"
        raise RuntimeError(f"one fold needs {need} for its workers, but the cluster has {cluster_cpus:g} CPUs "
                           f"({budget:g} usable beside Ray Data) and {gpus:g} GPUs: use fewer workers or "
                           "smaller cpus_per_worker")  # fmt: skip
    return max(1, min(folds, fit, wanted or folds))


def plan_resources(s: TrainSettings, trials: int) -> tuple[bool, float, int]:
    """(use GPUs, CPUs per worker, trainings at once) for ``trials`` trainings on the connected Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    use_gpu = s.use_gpu if s.use_gpu is not None else gpus > 0
    per_worker = s.cpus_per_worker or (1.0 if use_gpu else runtime.worker_cpus(s.workers, cpus) / 2)
    return use_gpu, per_worker, plan_concurrency(trials, s.workers, per_worker, cpus, gpus, use_gpu, s.concurrency)


def _fold_config(gold: Gold, s: TrainSettings, fold: int, inputs: int, train_rows: int, final: bool,
                 epochs: int, out: Path, crash_at_epoch: int | None = None) -> dict:  # fmt: skip
    return {**s.model_dump(exclude={"search"}), "hidden": list(s.hidden), "fold": fold, "final": final, "epochs": epochs,
            "kind": gold.kind, "inputs": inputs, "classes": len(gold.classes), "channels": gold.image_channels,
            "size": gold.image_size, "train_rows": train_rows, "delta_version": gold.version,
            "crash_at_epoch": crash_at_epoch, "crash_marker": str(out / f"crashed-{fold}"),
            "error_file": str(out / f"error-{'final' if final else f'fold-{fold}'}.json"),
            "tensorboard_dir": str(out / "tensorboard" / ("final" if final else f"fold-{fold}")) if s.tensorboard else None}  # fmt: skip


def run_fold(gold: Gold, s: TrainSettings, fold: int, out: Path, *, final: bool = False, epochs: int | None = None,
             use_gpu: bool = False, cpus_per_worker: float = 1.0, crash_at_epoch: int | None = None) -> dict:  # fmt: skip
    """Train one fold (or the final model) with a TorchTrainer; returns its metrics, history and predictions.
    ``crash_at_epoch`` is for tests: the worker process dies once, mid-training, at that epoch."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from training import data
    from training.worker import BEST, HISTORY, PREDICTIONS, train_fold

    train, val, inputs = data.fold_datasets(gold, fold, cache=s.cache)
    train_rows = train.count()
    config = _fold_config(gold, s, fold, inputs, train_rows, final, epochs or s.epochs, out, crash_at_epoch)
    name = "final" if final else f"fold-{fold}"
    trainer = TorchTrainer(
        train_fold,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=s.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),  # fmt: skip
        datasets={"train": train, "val": val},
        # One worker needs no split (and no split coordinator actor); several split the training rows.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if s.workers > 1 else []),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str((out / "ray").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),  # fmt: skip
    )
    Path(config["error_file"]).unlink(missing_ok=True)  # left by an earlier run into this folder
    try:
        result = trainer.fit()
    except Exception:
        _raise_recorded(config, name)
        raise
    _raise_recorded(config, name)
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / HISTORY).read_text())  # every epoch, across restarts
        pred = dict(np.load(Path(d) / PREDICTIONS, allow_pickle=False))
        best = Path(d) / BEST
        weights = best.read_bytes()
    best_metrics = json.loads(str(pred["metrics"]))
    return {"fold": fold, "final": final, "train_rows": train_rows, "metrics": best_metrics, "history": history,
            "val_rows": len(pred["ids"]), "ids": pred["ids"], "labels": pred["labels"],
            "probabilities": pred["probabilities"], "confusion": pred["confusion"].tolist(),
            "weights": weights, "resumed": any(h.get("resumed_from") is not None for h in history)}  # fmt: skip


class TrainingError(RuntimeError):
    """A fold's training function raised a deterministic error (recorded by the worker, not retried)."""


def _raise_recorded(config: dict, name: str) -> None:
    from training.worker import read_error

    error = read_error(config["error_file"])
    if error is not None:
        raise TrainingError(f"{name}: training failed with {error['error']} (a deterministic error in the "
                            f"training function: not retried; traceback in {config['error_file']})")  # fmt: skip


def cross_validate(gold: Gold, s: TrainSettings, out: str | Path, *, search: dict | None = None) -> dict:
    """All folds (concurrently as resources allow), then the final model; writes the outputs. ``search``:
    the summary of the hyperparameter search that chose ``s``, kept in ``cv.json``."""
    from ray import tune

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_gpu, per_worker, slots = plan_resources(s, gold.folds)
    log.info("cross-validation: %d folds, %d at once (%g CPUs/worker, %d worker(s)/fold, GPU: %s)", gold.folds,
             slots, per_worker, s.workers, use_gpu)  # fmt: skip
    start = time.perf_counter()

    def trial(config: dict) -> dict:
        result = run_fold(gold, s, config["fold"], out, use_gpu=use_gpu, cpus_per_worker=per_worker)
        save_fold(result, out / f"fold-{config['fold']}.json")
        return {"done": True, **{f"val_{k}": v for k, v in result["metrics"].items() if isinstance(v, float)}}

    reused = reuse_search_folds(search, gold, s, out)
    if not reused:
        run_grid(trial, {"fold": tune.grid_search(list(range(gold.folds)))}, slots, out / "tune", "cv",
                 lambda c: f"fold {c['fold']}", gold.folds, start)  # fmt: skip
    folds = [load_fold(out / f"fold-{f}.json") for f in range(gold.folds)]
    cv_seconds = time.perf_counter() - start
    epochs = max(1, round(float(np.mean([f["metrics"]["epoch"] for f in folds])) + 1))
    log.info("folds done in %.0f s; final model: %d epoch(s) on every non-test row, scored on the test part",
             cv_seconds, epochs)  # fmt: skip
    final = run_fold(gold, s, gold.folds, out, final=True, epochs=epochs, use_gpu=use_gpu,
                     cpus_per_worker=per_worker)  # fmt: skip
    (out / "model.pt").write_bytes(final["weights"])
    summary = {
        "table": gold.path, "delta_version": gold.version, "gold_run_id": gold.run_id, "kind": gold.kind,
        "classes": list(gold.classes), "folds": gold.folds, "concurrent_folds": slots, "use_gpu": use_gpu,
        "folds_from_search": reused,
        "settings": s.model_dump(mode="json", exclude={"search"}), "cv_seconds": round(cv_seconds, 2),
        "per_fold": [{"fold": f["fold"], "train_rows": f["train_rows"], "val_rows": f["val_rows"],
                      "resumed": f["resumed"], **{m: f["metrics"][m] for m in METRICS}, "best_epoch": f["metrics"]["epoch"],
                      "history": f["history"]}
                     for f in folds],
        "confusion": np.sum([np.asarray(f["confusion"]) for f in folds], axis=0).tolist(),
        "mean": {m: float(np.nanmean([f["metrics"][m] for f in folds])) for m in METRICS},
        "std": {m: float(np.nanstd([f["metrics"][m] for f in folds])) for m in METRICS},
        "final": {"epochs": epochs, "train_rows": final["train_rows"], "test_rows": len(final["ids"]),
                  **{f"test_{m}": final["metrics"][m] for m in METRICS}},
    }  # fmt: skip
    if search is not None:
        summary["search"] = {k: v for k, v in search.items() if k != "results"}
    summary["predictions"] = write_predictions(gold, (load_fold(out / f"fold-{f}.json", rows=True)
                                                       for f in range(gold.folds)))
    (out / "cv.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


PER_ROW = ("ids", "labels", "probabilities")


def save_fold(result: dict, path: Path) -> None:
    """A fold's result: ``fold-<f>.json`` (metrics, history, counts) and, beside it, ``fold-<f>.npz`` (its
    validation rows' ids, labels and probabilities as arrays: per-row data never goes through JSON)."""
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "weights" and k not in PER_ROW}))
    np.savez(path.with_suffix(".npz"), **{k: np.asarray(result[k]) for k in PER_ROW})


def load_fold(path: Path, rows: bool = False) -> dict:
    """A saved fold (with its per-row arrays when ``rows``)."""
    fold = json.loads(path.read_text())
    if rows:
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
            fold.update({k: arrays[k] for k in PER_ROW})
    return fold


def reuse_search_folds(search: dict | None, gold: Gold, s: TrainSettings, out: Path) -> bool:
    """When the search's best trial trained every fold with exactly these settings, its folds are this
    cross-validation's: copy their results (and TensorBoard files) instead of training them again."""
    if not search or search["folds"] != gold.folds or search["epochs"] != s.epochs:
        return False
    source = Path(search["best"]["dir"])
    if not all((source / f"fold-{f}.json").is_file() for f in range(gold.folds)):
        return False
    for f in range(gold.folds):
        for suffix in (".json", ".npz"):
            shutil.copyfile(source / f"fold-{f}{suffix}", out / f"fold-{f}{suffix}")
        if (source / "tensorboard" / f"fold-{f}").is_dir() and s.tensorboard:
            shutil.copytree(source / "tensorboard" / f"fold-{f}", out / "tensorboard" / f"fold-{f}", dirs_exist_ok=True)
    log.info("the search's best trial trained all %d folds with these settings: its folds are the CV's (not retrained)",
             gold.folds)  # fmt: skip
    return True


def run_grid(trial, param_space: dict, slots: int, storage: Path, name: str, describe, total: int, start: float,
             *, strict: bool = True, outcome=None, progress=None, **tune_config):  # fmt: skip
    """Run ``trial`` over a Tune param space, ``slots`` at once; one log line per finished trial. With
    ``strict``, raise if any trial failed. ``tune_config`` goes to ``TuneConfig`` (a searcher, a scheduler,
    ``num_samples``); ``outcome(last_result)`` words a finished trial's result, ``progress(result)`` each
    intermediate one (logged when given). Returns the ``ResultGrid``."""
    from ray import tune

    def words(r: dict) -> str:
        return f"val accuracy {r.get('val_accuracy', float('nan')):.3f}, macro-F1 {r.get('val_macro_f1', float('nan')):.3f}"

    class Progress(tune.Callback):
        """One line per finished trial, in the driver (Tune's own console tables are turned off)."""

        done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if progress is not None:
                log.info("%s: %s", describe(trial.config), progress(result))

        def on_trial_complete(self, iteration, trials, trial, **info):
            Progress.done += 1
            log.info("%s done (%d/%d, %.0f s since start): %s", describe(trial.config), Progress.done, total,
                     time.perf_counter() - start, (outcome or words)(trial.last_result or {}))  # fmt: skip

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment tables on stdout
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": TRIAL_CPU}),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, **tune_config),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=[Progress()]),
    )
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error]
    if errors and strict:
        raise RuntimeError(f"{len(errors)} of {total} trial(s) failed: {errors[0]}")
    return grid
