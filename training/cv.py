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

import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from training import data, runtime
from training.contract import jsonio
from training.contract.settings import METRICS, TrainSettings
from training.engine import Slot, cv_slots, ensemble_slots
from training.gold import Gold, write_predictions

log = logging.getLogger(__name__)
TRIAL_CPU = 0.01  # a Tune trial that only drives a trainer


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


def slot_config(gold: Gold, s: TrainSettings, slots: list[Slot], out: Path, *, final: bool = False,
                final_epochs: int | None = None, levels: list[str] | None = None, metric: str = "macro_f1",
                crash_at_epoch: int | None = None, members: int = 1) -> dict:  # fmt: skip
    """The worker's configuration of a run: the settings, the table, the slots and where things go (``members``:
    the final model's ensemble, see ``engine.ensemble_slots``)."""
    categories = data.vocabulary(gold)
    return {**s.model_dump(exclude={"search"}), "hidden": list(s.hidden), "table": gold.path, "version": gold.version,
            "slots": [dataclasses.asdict(x) for x in slots], "final": final, "final_epochs": final_epochs, "members": members,
            "levels": levels, "categories": categories, "inputs": data.width(gold, categories),
            "classes": len(gold.classes), "channels": gold.image_channels, "size": gold.image_size,
            "metric": metric, "report_key": f"mean_{metric}", "crash_at_epoch": crash_at_epoch,
            "crash_marker": str(out / "crashed"), "error_file": str(out / "error.json"),
            "tensorboard_dir": str(out / "tensorboard") if s.tensorboard else None}  # fmt: skip


def run_slots(gold: Gold, s: TrainSettings, slots: list[Slot], out: Path, *, final: bool = False,
              final_epochs: int | None = None, levels: list[str] | None = None, use_gpu: bool = False,
              cpus_per_worker: float = 1.0, crash_at_epoch: int | None = None, members: int = 1) -> dict[str, dict]:  # fmt: skip
    """Train ``slots`` (then the final model, ``members`` of it, when ``final``) in one pass per epoch with one
    worker group (a ``TorchTrainer``); returns each slot's result by name. ``crash_at_epoch`` is for tests: a
    worker process dies once, mid-run, at that epoch."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from training.worker import load_results, read_error, train_slots

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = slot_config(gold, s, slots, out, final=final, final_epochs=final_epochs, levels=levels,
                         crash_at_epoch=crash_at_epoch, members=members)  # fmt: skip
    Path(config["error_file"]).unlink(missing_ok=True)  # left by an earlier run into this folder
    trainer = TorchTrainer(
        train_slots,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=s.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),  # fmt: skip
        run_config=ray.train.RunConfig(
            name="slots", storage_path=str((out / "ray").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),  # fmt: skip
    )
    names = ", ".join(x.name for x in slots) + (" + final" if final else "")
    try:
        result = trainer.fit()
    except Exception:
        _raise_recorded(config, names, read_error)
        raise
    _raise_recorded(config, names, read_error)
    with result.checkpoint.as_directory() as d:
        return load_results(Path(d))


class TrainingError(RuntimeError):
    """A fold's training function raised a deterministic error (recorded by the worker, not retried)."""


def _raise_recorded(config: dict, name: str, read_error) -> None:
    error = read_error(config["error_file"])
    if error is not None:
        raise TrainingError(f"{name}: training failed with {error['error']} (a deterministic error in the "
                            f"training function: not retried; traceback in {config['error_file']})")  # fmt: skip


def cross_validate(gold: Gold, s: TrainSettings, out: str | Path, *, search: dict | None = None,
                   crash_at_epoch: int | None = None, final: bool = True, test_predictions: bool = False,
                   members: int = 1) -> dict:  # fmt: skip
    """Every fold and then the final model in one worker group, one pass over the rows per epoch (see
    ``training.worker``); writes the outputs. ``search``: the summary of the hyperparameter search that
    chose ``s``, kept in ``cv.json`` (its best trial's folds are reused when they are this CV's).
    ``final`` False: the folds only (their out-of-fold predictions), no ``model.pt``. ``test_predictions``:
    the final model's probabilities of the test part join the predictions table as ``fold = -1`` (the label
    audit judges those rows by a model that never trained on them, as the folds' rows are judged). ``members`` > 1:
    every fold and the final model is an ensemble of that many models trained in the same pass from different
    initial weights, scored (and written) by the mean of their probabilities; ``model.pt`` holds the first."""
    import torch

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_gpu, per_worker, _ = plan_resources(s, 1)
    start = time.perf_counter()
    reused = members == 1 and reuse_search_folds(search, gold, s, out)
    slots = [] if reused else ensemble_slots(cv_slots(gold.folds), members)
    final_epochs = None
    if reused:
        final_epochs = _final_epochs([load_fold(out / f"fold-{f}.json") for f in range(gold.folds)])
    groups = plan_slot_groups(gold, s, len(slots), use_gpu)
    log.info("cross-validation: %d fold(s) %s%s; %g CPUs/worker, %d worker(s), GPU: %s",
             len(slots), "in one pass per epoch" if len(groups) <= 1 else f"in {len(groups)} groups {groups}",
             ", then the final model" if final else " (no final model)", per_worker, s.workers, use_gpu)  # fmt: skip
    results, checkpoints = {}, 0
    for g, group in enumerate(groups if len(groups) > 1 else []):
        got = run_slots(gold, s, [slots[i] for i in group], out / f"group-{g}", use_gpu=use_gpu,
                        cpus_per_worker=per_worker, members=members)  # fmt: skip
        checkpoints += len(got.pop("checkpoints", []))
        results.update(got)
    if len(groups) > 1:
        final_epochs = _final_epochs([results[x.name] for x in slots])
    rest = slots if len(groups) <= 1 else []
    if final or rest:
        got = run_slots(gold, s, rest, out, final=final, final_epochs=final_epochs, use_gpu=use_gpu,
                        cpus_per_worker=per_worker, crash_at_epoch=crash_at_epoch, members=members)  # fmt: skip
        checkpoints += len(got.pop("checkpoints", []))
        results.update(got)
    classes = len(gold.classes)
    for x in slots:
        if not x.member:
            mine = [results[y.name] for y in slots if y.fold == x.fold]
            save_fold(fold_result(average(mine, classes), x.fold), out / f"fold-{x.fold}.json")
    folds = [load_fold(out / f"fold-{f}.json") for f in range(gold.folds)]
    model = results.get("final")
    if model is not None and members > 1:
        model = average([model, *(results[f"final-m{m}"] for m in range(1, members))], classes)
    cv_seconds = time.perf_counter() - start
    (out / "model.pt").unlink(missing_ok=True)  # an earlier run's, into this folder
    if model is not None:
        torch.save(model["weights"], out / "model.pt")
    summary = {
        "table": gold.path, "delta_version": gold.version, "gold_run_id": gold.run_id, "kind": gold.kind,
        "classes": list(gold.classes), "folds": gold.folds, "concurrent_folds": max(map(len, groups), default=gold.folds), "use_gpu": use_gpu,
        "members": members,
        "folds_from_search": reused, "checkpoints": checkpoints,
        "settings": s.model_dump(mode="json", exclude={"search"}), "cv_seconds": round(cv_seconds, 2),
        "per_fold": [{"fold": f["fold"], "train_rows": f["train_rows"], "val_rows": f["val_rows"],
                      "resumed": f["resumed"], **{m: f["metrics"][m] for m in METRICS}, "best_epoch": f["metrics"]["epoch"],
                      "history": f["history"]}
                     for f in folds],
        "confusion": np.sum([np.asarray(f["confusion"]) for f in folds], axis=0).tolist(),
        "mean": {m: float(np.nanmean([f["metrics"][m] for f in folds])) for m in METRICS},
        "std": {m: float(np.nanstd([f["metrics"][m] for f in folds])) for m in METRICS},
        "final": None if model is None else {
            "epochs": len(model["history"]), "train_rows": model["train_rows"], "test_rows": len(model["ids"]),
            "resumed": model["resumed"], **{f"test_{m}": model["metrics"][m] for m in METRICS}},
    }  # fmt: skip
    if search is not None:
        summary["search"] = {k: v for k, v in search.items() if k != "results"}
    from training import loop

    scored = [load_fold(out / f"fold-{f}.json", rows=True) for f in range(gold.folds)]
    summary["calibration"] = {  # the reliability diagram's bins: out-of-fold rows pooled, and the test part
        "out_of_fold": loop.reliability(np.concatenate([f["labels"] for f in scored]),
                                        np.concatenate([f["probabilities"] for f in scored]))}  # fmt: skip
    if model is not None and len(model["ids"]):  # no test part (`split.test_fraction` 0): no test bins
        summary["calibration"]["test"] = loop.reliability(np.asarray(model["labels"]), np.asarray(model["probabilities"]))
    if test_predictions and model is not None and len(model["ids"]):
        scored.append({"fold": -1, "ids": np.asarray(model["ids"]), "labels": np.asarray(model["labels"]),
                       "probabilities": np.asarray(model["probabilities"])})  # fmt: skip
    summary["predictions"] = write_predictions(gold, iter(scored))
    jsonio.dump(summary, out / "cv.json")
    return summary


def fold_result(r: dict, fold: int) -> dict:
    """A slot's result as a fold's (what ``save_fold`` writes)."""
    return {"fold": fold, "final": False, "train_rows": r["train_rows"], "metrics": r["metrics"], "history": r["history"],
            "val_rows": len(r["ids"]), "ids": r["ids"], "labels": r["labels"], "probabilities": r["probabilities"],
            "confusion": r["confusion"], "resumed": r["resumed"]}  # fmt: skip


def average(results: list[dict], classes: int) -> dict:
    """An ensemble's result from its members' (the same validation rows in the same order): the mean of their
    probabilities, scored again; the first member's weights, history and best epoch."""
    first = results[0]
    if len(results) == 1:
        return first
    if any(not np.array_equal(first["ids"], r["ids"]) for r in results[1:]):
        raise RuntimeError("an ensemble's members scored different rows (a defect: they share one slot's masks)")
    from training import loop

    p = np.mean([np.asarray(r["probabilities"], dtype=np.float64) for r in results], axis=0)
    ev = loop.score(np.asarray(first["labels"]), p, classes)
    return {**first, "probabilities": p.astype(np.asarray(first["probabilities"]).dtype), "confusion": ev.confusion,
            "metrics": {**ev.metrics, "loss": ev.loss, "epoch": first["metrics"]["epoch"]}}  # fmt: skip


def _final_epochs(folds: list[dict]) -> int:
    return max(1, round(float(np.mean([f["metrics"]["epoch"] for f in folds])) + 1))


def plan_slot_groups(gold: Gold, s: TrainSettings, slots: int, use_gpu: bool) -> list[range]:
    """Slots that fit one device together (``engine.plan_groups``): a slot's memory from its model's
    parameters and one batch, against the GPU's memory (the driver's first GPU; else 16 GiB) or, on CPUs,
    a quarter of this node's memory per worker."""
    import torch

    from training import models
    from training.engine import plan_groups, slot_bytes

    if not slots:
        return []
    inputs = data.width(gold, data.vocabulary(gold)) if gold.kind != "images" else 0
    model = models.build(gold.kind, inputs=inputs, classes=len(gold.classes), channels=gold.image_channels or 3,
                         size=gold.image_size or 32, name=s.model, hidden=tuple(s.hidden), dropout=s.dropout)  # fmt: skip
    row = 4 * (inputs or (gold.image_channels or 3) * (gold.image_size or 32) ** 2)
    if use_gpu:
        budget = torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else 16 * 2**30
    else:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (4 * s.workers)
    return plan_groups(slots, slot_bytes(model, s.batch_size, row), int(budget * 0.8))


PER_ROW = ("ids", "labels", "probabilities")


def save_fold(result: dict, path: Path) -> None:
    """A fold's result: ``fold-<f>.json`` (metrics, history, counts) and, beside it, ``fold-<f>.npz`` (its
    validation rows' ids, labels and probabilities as arrays: per-row data never goes through JSON)."""
    path.write_text(jsonio.dumps({k: v for k, v in result.items() if k != "weights" and k not in PER_ROW}))
    np.savez(path.with_suffix(".npz"), **{k: np.asarray(result[k]) for k in PER_ROW})


def load_fold(path: Path, rows: bool = False) -> dict:
    """A saved fold (with its per-row arrays when ``rows``)."""
    fold = jsonio.load(path)
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
             *, strict: bool = True, outcome=None, progress=None, resources: dict | None = None,
             **tune_config):  # fmt: skip
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
        tune.with_resources(trial, resources or {"cpu": TRIAL_CPU}),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, **tune_config),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=[Progress()]),
    )
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error]
    if errors and strict:
        raise RuntimeError(f"{len(errors)} of {total} trial(s) failed: {errors[0]}")
    return grid
