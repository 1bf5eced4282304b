"""What each worker runs: every slot of a run in one pass per epoch (the Ray glue around ``loop``).

A worker reads its share of gold once (``data.load``), computes every slot's row masks and
encoder statistics from it (summed over the workers), builds one model per slot and then,
each epoch, streams its rows once in shared batches: each slot trains on its own rows of a
batch and, after the epoch, scores its own validation rows; a slot stops on its own when
its validation loss has not improved for ``patience`` epochs. Workers average every slot's
gradient in one collective per batch; each scores the validation rows it holds and the
predictions are gathered, so every validation row is scored exactly once per slot and every
worker takes the same early-stopping decisions.

A cross-validation runs in two phases in the same worker group: the folds, then the final
model on every non-test row for the folds' mean best epoch (scored on the test part).
Under Ray Train, rank 0 checkpoints every slot after each epoch (model, optimiser,
schedule, scaler, early stopping, best weights and predictions, history) and a restarted
worker group resumes from there; it also writes each slot's metrics as TensorBoard event
files (``<out>/tensorboard/<slot>``). A search trial runs the same function in its Tune
trial's process (one worker) and reports the folds' mean metric after every epoch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from training import augment, data, loop, models, progress
from training.contract import jsonio
from training.engine import Slot, SlotInput, ensemble_slots
from training.gold import Contract, Gold

log = logging.getLogger(__name__)
STATE, HISTORY, RESULTS = "state.pt", "history.json", "results.json"
PER_ROW = ("ids", "labels", "probabilities")


def best_file(i: int) -> str:
    return f"best-{i}.pt"


def predictions_file(i: int) -> str:
    return f"predictions-{i}.npz"


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors a retry can cure: a lost actor, node or object, I/O, a collective broken by a dead peer. An
    exception raised by a task's own code (``RayTaskError``) or by the loop itself is deterministic."""
    import ray.exceptions

    kinds: list[type[BaseException]] = [ray.exceptions.ActorDiedError, ray.exceptions.ObjectLostError,
                                        ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
                                        ray.exceptions.RaySystemError, OSError]  # fmt: skip
    if hasattr(torch.distributed, "DistBackendError"):
        kinds.append(torch.distributed.DistBackendError)
    return tuple(kinds)


def read_error(path: str | Path) -> dict | None:
    """The deterministic error a run's training recorded, if any."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def train_slots(config: dict, report: Callable | None = None) -> dict | None:
    """The ``train_loop_per_worker`` of a run's ``TorchTrainer`` (``report`` None), or a search trial's
    body (``report``: Tune's). Returns every slot's result when it runs in-process (a search trial).

    A deterministic error in the loop (an exception from its own code, not a dead worker or node) is
    written to ``config["error_file"]`` and the worker returns: Ray Train does not retry it
    ``max_failures`` times. With several workers it is raised as well, so the group is torn down rather
    than left waiting in a collective; the retried attempt finds the file and returns at once.
    """
    error_file = Path(config["error_file"])
    recorded = read_error(error_file)
    if recorded is not None:  # an earlier attempt failed deterministically: do not train again
        recorded["attempts"] += 1
        error_file.write_text(json.dumps(recorded))
        return None
    try:
        results = Run(config, report).train()
        return results if report is not None else None  # under Ray Train the checkpoint carries them
    except transient_errors():
        raise
    except Exception as exc:
        import traceback

        error_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "attempts": 1,
                                          "traceback": traceback.format_exc()}))  # fmt: skip
        if report is None:
            import ray.train

            if ray.train.get_context().get_world_size() > 1:
                raise
        return None


class Run:
    """One worker's run: its rows, the slots of each phase, their state, checkpoints and reports."""

    def __init__(self, config: dict, report: Callable | None):
        self.config, self.report = config, report
        if report is None:
            import ray.train
            import ray.train.torch

            ctx = ray.train.get_context()
            self.rank, self.world, self.device = ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()
            if self.device.type == "cpu":
                # Ray gives a worker with a fraction of a CPU one OpenMP thread. The node's cores are this run's
                # (the data path needs no Ray tasks and the stages run one at a time): share them among the
                # node's workers, so one worker on 2 cores computes on both.
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                torch.set_num_threads(max(1, cores // max(1, ctx.get_local_world_size())))
        else:
            cuda = config.get("use_gpu") and torch.cuda.is_available()
            self.rank, self.world, self.device = 0, 1, torch.device("cuda" if cuda else "cpu")
        self.gold = Gold.open(config["table"], config["version"])
        self.images = self.gold.kind == "images"
        self.history: dict[str, list[dict]] = {}
        self.results: dict[str, dict] = {}
        self.poster: progress.Poster | None = None
        self.checkpointed = time.monotonic()  # when the last checkpoint was reported (the run's start before one)

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(t)
        return t

    def gather(self, value):
        """Every worker's ``value``, in rank order (one worker: just its own)."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    # -- the run ---------------------------------------------------------------------------------------
    def train(self) -> dict:
        c = self.config
        phases = [[Slot(**s) for s in c["slots"]]] if c["slots"] else []
        if c.get("final"):  # the final model (and its ensemble's other members: ``members``)
            phases.append(ensemble_slots([Slot(self.gold.folds, final=True)], c.get("members") or 1))
        state = self._restore()
        start_phase = state["phase"] if state else 0
        read = None  # which of the snapshot's files ``self.rows`` holds: None (all) or "train"
        for p in range(start_phase, len(phases)):
            slots = phases[p]
            test = any(s.final for s in slots)  # only the final model is scored on the test part
            if p == start_phase:  # the folds never read a test row: the files holding only test rows wait
                read = None if test else "train"
                self.rows = data.load(self.gold, self.rank, self.world, levels=c.get("levels"), part=read)
            elif test and read == "train":
                self.rows = self.rows.extend(data.load(self.gold, self.rank, self.world, levels=c.get("levels"),
                                                       categories=self.rows.categories, part="test"))  # fmt: skip
                read = None
            epochs = c["epochs"]
            if all(s.final for s in slots):
                epochs = c.get("final_epochs") or self._final_epochs()
                self.results.setdefault("final_epochs", {"epochs": epochs})
            self._phase(p, slots, epochs, state if p == start_phase else None)
        return self.results

    def _final_epochs(self) -> int:
        """The final model trains for the folds' mean best epoch (1-based)."""
        best = [r["metrics"]["epoch"] for name, r in self.results.items() if name.startswith("fold-")]
        return max(1, round(float(np.mean(best))) + 1) if best else self.config["epochs"]

    def _phase(self, phase: int, slots: list[Slot], epochs: int, state: dict | None) -> None:
        c, rows, folds = self.config, self.rows, self.gold.folds
        final = [s.final for s in slots]
        contract = Contract(rows.contract)  # the contract's columns as arrays, once for every slot
        masks = [s.masks(contract, folds) for s in slots]
        train_m = torch.from_numpy(np.stack([m[0] for m in masks]))
        val_m = torch.from_numpy(np.stack([m[1] for m in masks]))
        union = torch.from_numpy(np.flatnonzero(train_m.numpy().any(0)))  # NumPy's: 5-10x torch's nonzero here
        levels = self._levels(slots, union)  # trade-off levels: (each slot's level, each level's rows, batches)
        models_ = self._build(slots, train_m, epochs, None if levels is None else [levels[2][g] for g in levels[0]])
        start, resumed = 0, None
        best: list[dict | None] = [None] * len(slots)
        if state is not None:
            for s, saved in zip(models_, state["slots"], strict=True):
                s.load_state_dict(saved)
            start = resumed = int(state["epoch"]) + 1
            best = state["best"]
        steps = len(loop.spans_of(len(union), c["batch_size"]))
        if self.world > 1:  # every worker takes the same number of steps
            steps = self._min_reduce(steps)
        train_tf = augment.augmenter(c["size"], c["channels"], c["flip"]) if self.images else None
        val_tf = augment.normalise if self.images else None
        mix = augment.mixer(c.get("mix"), c["classes"]) if self.images else None
        writers = self._writers(slots, start)
        known = None  # per slot: every worker's validation ids and labels (rank order), gathered once below
        for epoch in range(start, epochs):
            if all(s.stopped for s in models_):
                break
            torch.manual_seed(c["seed"] * 1000 + epoch)  # dropout and augmentation, the same on a resumed run
            shuffle = (c["seed"], epoch, self.rank)  # each worker its own order, the same on a resumed run
            spans = None
            if levels is None:
                order = loop.shuffled(union, shuffle)
            else:  # one level per batch, the levels' batches in an order every worker shares
                mine = [loop.shuffled(rows_, (*shuffle, g)) for g, rows_ in enumerate(levels[1])]
                order, spans = loop.grouped_order(mine, c["batch_size"], torch.Generator().manual_seed(
                    c["seed"] + 7919 * epoch), levels[2])  # fmt: skip
            losses = loop.train_epoch(models_, rows.x, rows.y, train_m, order, c["batch_size"], self.device,
                                      transform=train_tf, mix=mix, steps=steps,
                                      allreduce=self.allreduce if self.world > 1 else None,
                                      flagged=rows.augment if self.images and c["augment"] == "flagged" else None,
                                      plain=val_tf, spans=spans)  # fmt: skip
            probs = loop.evaluate(models_, rows.x, val_m, 4 * c["batch_size"], self.device, c["classes"],
                                  transform=val_tf)  # fmt: skip
            if known is None:  # the ids are read and sent once per phase, after the first epoch's steps
                mine = self.gather([(rows.ids_of(m.numpy()), rows.y[m].numpy()) for m in val_m])
                known = [tuple(np.concatenate([w[i][j] for w in mine]) for j in (0, 1)) for i in range(len(slots))]
            gathered = self.gather([probs[i] for i in range(len(slots))])  # every epoch: the probabilities only
            if c.get("crash_at_epoch") == epoch and phase == 0 and not Path(c["crash_marker"]).exists():
                # Tests: the worker process dies mid-run, once. Ray Train's controller collects reports on its
                # health check (every 2 s); the delay lets it register the last checkpoint, as any real epoch would.
                time.sleep(6)
                Path(c["crash_marker"]).write_text(str(epoch))
                os._exit(1)
            for i, (slot, s) in enumerate(zip(slots, models_, strict=True)):
                if s.stopped:
                    continue
                ids, y = known[i]
                p = np.concatenate([g[i] for g in gathered])
                ev = loop.score(y, p, c["classes"])
                improved = s.stopper.step(ev.loss, epoch) or final[i]
                s.stopped = s.stopper.stop and not final[i]
                metrics = {"epoch": epoch, "train_loss": losses[i], "val_loss": ev.loss, "val_rows": len(ids),
                           **{f"val_{k}": v for k, v in ev.metrics.items()}, "best_epoch": s.stopper.best_epoch,
                           "resumed_from": resumed}  # fmt: skip
                self.history.setdefault(slot.name, []).append(metrics)
                if improved:
                    module = s.model
                    best[i] = {"weights": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
                               "ids": ids, "labels": y, "probabilities": p, "confusion": ev.confusion,
                               "metrics": {**ev.metrics, "loss": ev.loss, "epoch": epoch}}  # fmt: skip
                if writers:
                    for key, value in _scalars(metrics).items():
                        writers[i].add_scalar(key, value, epoch)
                    writers[i].flush()  # readable while the run goes on, and complete if the worker dies next
            self._collect(slots, best, train_m)
            self._post(slots, models_, best, epoch, epochs)
            self._report(phase, epoch, slots, models_, best, last=epoch == epochs - 1 or all(s.stopped for s in models_))
        for w in writers:
            w.close()
        self._collect(slots, best, train_m)

    def _min_reduce(self, value: int) -> int:
        t = torch.tensor([float(value)])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())

    def _levels(self, slots: list[Slot], union: torch.Tensor) -> tuple[list[int], list[torch.Tensor], list[int]] | None:
        """For slots of a trade-off table's levels: each slot's level (an index), each level's training rows
        among ``union``, and the batches per epoch of each level (the fewest any worker has, so every worker
        takes the same steps). None for a table without levels."""
        names = self.config.get("levels")
        if not names or any(s.level is None for s in slots):
            return None
        level = pc.index_in(self.rows.contract.column("level"), value_set=pa.array(names))
        level = torch.from_numpy(level.to_numpy(zero_copy_only=False).astype(np.int64))[union]
        groups = [union[level == g] for g in range(len(names))]
        batches = torch.tensor([len(loop.spans_of(len(g), self.config["batch_size"])) for g in groups], dtype=torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(batches, op=torch.distributed.ReduceOp.MIN)
        return [names.index(s.level) for s in slots], groups, [int(b) for b in batches]

    def _build(self, slots: list[Slot], train_m: torch.Tensor, epochs: int,
               per_slot_steps: list[int] | None = None) -> list[loop.SlotModel]:  # fmt: skip
        """One model per slot, initialised from a seed of its own (a slot trained alone starts the same).
        ``per_slot_steps``: the optimiser steps of each slot per epoch, where they differ (one level per batch)."""
        c = self.config
        stats = None
        if not self.images:
            sums = data.slot_statistics(self.rows.x, self.rows.numeric, train_m)
            if self.world > 1:
                sums = {k: self.allreduce(v) for k, v in sums.items()}
            stats = data.finish_statistics(sums)
        union = int(self._sum(train_m.any(0).sum().item()))
        steps = max(1, -(-union // (c["batch_size"] * self.world)))
        out = []
        for i, slot in enumerate(slots):
            torch.manual_seed(c["seed"] + zlib.crc32(slot.name.encode()) % 100_003)
            net = models.build(self.gold.kind, inputs=c["inputs"], classes=c["classes"], channels=c["channels"] or 3,
                               size=c["size"] or 32, name=c.get("model"), hidden=tuple(c["hidden"]),
                               dropout=c["dropout"])  # fmt: skip
            if stats is not None:
                net = torch.nn.Sequential(SlotInput(stats[0][i], stats[1][i], stats[2][i]), net)
            net = net.to(self.device)
            optimizer = loop.make_optimizer(net, c["lr"], c["weight_decay"])
            mine = max(1, per_slot_steps[i]) if per_slot_steps is not None else steps
            scheduler = loop.cosine_with_warmup(optimizer, min(mine, c["warmup_steps"]), mine * epochs)
            scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" and c["amp"] else None
            patience = 10**9 if slot.final else c["patience"]
            weight = None
            if (slot.class_weight or c.get("class_weight")) == "balanced":  # from this slot's own training rows
                counts = torch.bincount(self.rows.y[train_m[i]], minlength=c["classes"]).double()
                weight = loop.balanced_weights(self.allreduce(counts) if self.world > 1 else counts).to(self.device)
            out.append(loop.SlotModel(net, optimizer, scheduler, loop.EarlyStopping(patience=patience), scaler,
                                      class_weight=weight))  # fmt: skip
        return out

    def _sum(self, value: float) -> float:
        if self.world == 1:
            return value
        return float(self.allreduce(torch.tensor([float(value)], dtype=torch.float64)).item())

    def _collect(self, slots: list[Slot], best: list[dict | None], train_m: torch.Tensor) -> None:
        train_rows = [int(self._sum(int(m.sum()))) for m in train_m] if self.world > 1 else [int(m.sum()) for m in train_m]
        for i, slot in enumerate(slots):
            if best[i] is None:
                continue
            history = self.history.get(slot.name, [])
            self.results[slot.name] = {**best[i], "train_rows": train_rows[i], "history": history,
                                       "resumed": any(h.get("resumed_from") is not None for h in history)}  # fmt: skip

    # -- checkpoints and reports ----------------------------------------------------------------------
    def _post(self, slots: list[Slot], models_: list[loop.SlotModel], best: list[dict | None], epoch: int,
              epochs: int) -> None:  # fmt: skip
        """The epoch's progress event (``training.progress``), from rank 0."""
        if self.rank != 0:
            return
        if self.poster is None:
            self.poster = progress.Poster()
        metric = self.config["metric"]
        run = self.config.get("progress_run")
        if slots and all(s.final for s in slots):
            run = f"{run}, final model" if run else "final model"
        self.poster.post({
            "run": run, "epoch": epoch + 1, "epochs": epochs, "metric": metric,
            "slots": [{"name": slot.name, "stopped": bool(s.stopped),
                       "value": float(self.history[slot.name][-1].get(f"val_{metric}", float("nan")))
                       if self.history.get(slot.name) else None,
                       "best": float(b["metrics"][metric]) if b is not None else None}
                      for slot, s, b in zip(slots, models_, best, strict=True)],
        })  # fmt: skip

    def _report(self, phase: int, epoch: int, slots: list[Slot], models_: list[loop.SlotModel],
                best: list[dict | None], last: bool = False) -> None:  # fmt: skip
        c = self.config
        scores = [b["metrics"][c["metric"]] for b in best if b is not None]
        summary = {"phase": phase, "epoch": epoch, "active": sum(not s.stopped for s in models_),
                   c["report_key"]: float(np.nanmean(scores)) if scores and not np.all(np.isnan(scores)) else float("nan")}  # fmt: skip
        if self.report is not None:  # a search trial: Tune's report, no checkpoint
            if last:  # the caller reports it after saving the results: a scheduler may stop the trial at a report
                self.results["report"] = summary
            else:
                self.report(summary)
            return
        import ray.train

        if not self._checkpoint_due(last):
            return
        if self.rank != 0:
            ray.train.report(summary)
            return
        self.results.setdefault("checkpoints", []).append([phase, epoch])
        with tempfile.TemporaryDirectory() as d:
            state = {"phase": phase, "epoch": epoch, "slots": [s.state_dict() for s in models_],
                     "best": [None if b is None else {k: v for k, v in b.items() if k != "weights"} for b in best]}  # fmt: skip
            torch.save(_tensors(state), Path(d) / STATE)
            for i, b in enumerate(best):
                if b is not None:
                    torch.save(b["weights"], Path(d) / best_file(i))
            (Path(d) / HISTORY).write_text(jsonio.dumps(self.history))
            save_results(self.results, Path(d))
            ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(d))
        self.checkpointed = time.monotonic()

    def _checkpoint_due(self, last: bool) -> bool:
        """Whether this epoch reports a checkpoint: the last epoch of a phase, else when ``checkpoint_seconds``
        have passed since the run's start or its last checkpoint (rank 0's clock: every worker reports together).
        A report costs a checkpoint's write and a wait for Ray Train's controller to take the previous one (up
        to its poll interval): on epochs of a fraction of a second that was a large share of a small run (3 s of 17)."""
        due = last or time.monotonic() - self.checkpointed >= float(self.config.get("checkpoint_seconds") or 0)
        if self.world > 1:
            flag = torch.tensor([float(due and self.rank == 0) + float(last)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def _restore(self) -> dict | None:
        """The latest checkpoint's state (Ray Train restarted the worker group), or None."""
        if self.report is not None:
            return None
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as d:
            state = _arrays(torch.load(Path(d) / STATE, map_location="cpu", weights_only=True))
            self.history = jsonio.load(Path(d) / HISTORY)
            self.results = load_results(Path(d))
            for i, b in enumerate(state["best"]):
                if b is not None:
                    b["weights"] = torch.load(Path(d) / best_file(i), map_location="cpu", weights_only=True)
        return state

    def _writers(self, slots: list[Slot], start: int) -> list:
        """Rank 0's event-file writer per slot; ``purge_step`` drops the points a restarted run redoes."""
        if self.rank != 0 or not self.config.get("tensorboard_dir"):
            return []
        from torch.utils.tensorboard import SummaryWriter

        root = Path(self.config["tensorboard_dir"])
        return [SummaryWriter(log_dir=str(root / s.name), purge_step=start or None) for s in slots]


def _scalars(metrics: dict) -> dict[str, float]:
    """The per-epoch figures TensorBoard plots (losses and validation metrics; NaN ROC-AUC is left out)."""
    return {k: float(v) for k, v in metrics.items()
            if k not in ("epoch", "best_epoch", "resumed_from", "val_rows") and isinstance(v, (int, float))
            and not isinstance(v, bool) and v == v}  # fmt: skip


def _tensors(value):
    """numpy arrays → tensors (strings → lists), so a checkpoint loads with ``weights_only=True``."""
    if isinstance(value, np.ndarray):
        return value.tolist() if value.dtype.kind in "US" else torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_tensors(v) for v in value)
    return value


def _arrays(value):
    """The inverse of ``_tensors`` for the saved predictions (tensors stay tensors in model states)."""
    if isinstance(value, dict):
        out = {k: _arrays(v) for k, v in value.items()}
        for key in ("ids", "labels", "probabilities"):
            if key in out and not isinstance(out[key], np.ndarray):
                out[key] = np.asarray(out[key].numpy() if isinstance(out[key], torch.Tensor) else out[key])
        return out
    if isinstance(value, list):
        return [_arrays(v) for v in value]
    return value


def save_results(results: dict, folder: Path) -> None:
    """Each finished slot's result: scalars and history in ``results.json``, its validation rows' ids, labels
    and probabilities in ``results-<k>.npz``, the final model's weights in ``results-<k>.pt``."""
    names = sorted(k for k in results if k not in ("final_epochs", "report", "checkpoints"))
    (folder / RESULTS).write_text(jsonio.dumps({"names": names, "final_epochs": results.get("final_epochs"),
                                                "checkpoints": results.get("checkpoints", []),
                                                "results": {n: {k: v for k, v in results[n].items()
                                                                if k not in PER_ROW and k != "weights"}
                                                            for n in names}}))  # fmt: skip
    for k, name in enumerate(names):
        r = results[name]
        np.savez(folder / f"results-{k}.npz", ids=np.asarray(r["ids"], dtype=np.str_), labels=np.asarray(r["labels"]),
                 probabilities=np.asarray(r["probabilities"]))  # fmt: skip
        if name == "final" and "weights" in r:
            torch.save(r["weights"], folder / f"results-{k}.pt")


def load_results(folder: Path) -> dict:
    saved = jsonio.load(folder / RESULTS)
    out: dict = {"final_epochs": saved["final_epochs"]} if saved.get("final_epochs") else {}
    if saved.get("checkpoints"):  # (phase, epoch) of each checkpoint the run reported, this one included
        out["checkpoints"] = saved["checkpoints"]
    for k, name in enumerate(saved["names"]):
        with np.load(folder / f"results-{k}.npz", allow_pickle=False) as arrays:
            out[name] = {**saved["results"][name], **{key: arrays[key] for key in PER_ROW}}
        if (folder / f"results-{k}.pt").is_file():
            out[name]["weights"] = torch.load(folder / f"results-{k}.pt", map_location="cpu", weights_only=True)
    return out
