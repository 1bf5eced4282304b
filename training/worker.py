"""What each Ray Train worker runs for one fold: DDP model, dataset shards, the loop, checkpoints.

Every worker trains on its shard of the fold's training rows (``get_dataset_shard``)
and evaluates the *whole* validation set, which is never split (splitting may drop rows
to equalise workers): all workers see the same loss, so early stopping agrees without
communication, and rank 0 alone logs, checkpoints and keeps the predictions. Each
checkpoint holds the state to resume (model, optimizer, scheduler, scaler, epoch, early
stopping, config, Delta version) and the best epoch's weights and validation
probabilities; a restarted worker group continues from the latest one. Rank 0 also writes
every epoch's metrics as TensorBoard event files (``<out>/tensorboard/<fold>``), so a
run can be watched with ``tensorboard --logdir <out>/tensorboard`` while it trains.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training import augment, loop, models

log = logging.getLogger(__name__)
STATE, BEST, PREDICTIONS, HISTORY = "state.pt", "best_model.pt", "predictions.npz", "history.json"


def _collate(batch: dict, with_ids: bool) -> tuple:
    x = torch.from_numpy(np.array(batch["x"]))  # a writable copy of Ray's read-only block
    y = torch.from_numpy(np.array(batch["y"], dtype=np.int64))
    return (x, y, list(batch["sample_id"])) if with_ids else (x, y)


def _batches(shard, batch_size: int, transform=None, with_ids: bool = False, local_shuffle: int = 0):
    """One pass over a Ray Data shard as tensor batches, exactly as Ray Data delivers them."""
    it = shard.iter_torch_batches(batch_size=batch_size, collate_fn=lambda b: _collate(b, with_ids),
                                  local_shuffle_buffer_size=local_shuffle or None)  # fmt: skip
    for batch in it:
        if transform is not None:
            batch = (transform(batch[0]), *batch[1:])
        yield batch


class ShardCache:
    """A worker's shard, streamed from Ray Data in the first epoch and, when it fits in ``limit_mb``,
    kept in the worker's memory for the next ones (reshuffled each epoch; transforms still applied
    per epoch). Small and medium folds then pay Ray Data's per-epoch coordination once, not every
    epoch; a shard larger than the limit streams every epoch."""

    def __init__(self, shard, batch_size: int, limit_mb: float, *, shuffle: bool, with_ids: bool = False,
                 seed: int = 0):  # fmt: skip
        self.shard, self.batch_size, self.limit = shard, batch_size, limit_mb * 2**20
        self.shuffle, self.with_ids, self.seed = shuffle, with_ids, seed
        self.parts: tuple | None = None  # (x, y, ids) of the whole shard once a full pass fitted
        self.streaming = limit_mb <= 0

    def epoch(self, epoch: int, transform=None):
        if self.parts is not None:
            yield from self._replay(epoch, transform)
            return
        keep: list[tuple] | None = None if self.streaming else []
        size = 0
        for batch in _batches(self.shard, self.batch_size, with_ids=self.with_ids,
                              local_shuffle=4 * self.batch_size if self.shuffle else 0):  # fmt: skip
            if keep is not None:
                size += batch[0].element_size() * batch[0].nelement()
                if size > self.limit:
                    keep, self.streaming = None, True  # too big: stream every epoch
                else:
                    keep.append(batch)
            yield (transform(batch[0]), *batch[1:]) if transform is not None else batch
        if keep is not None:  # joined once here, not on every replayed epoch
            ids = [i for b in keep for i in b[2]] if self.with_ids else None
            self.parts = (torch.cat([b[0] for b in keep]), torch.cat([b[1] for b in keep]), ids)

    def _replay(self, epoch: int, transform):
        x, y, ids = self.parts
        order = (torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + epoch))
                 if self.shuffle else torch.arange(len(x)))  # fmt: skip
        for i in range(0, len(x), self.batch_size):
            pick = order[i : i + self.batch_size]
            xb = x[pick]
            out = (transform(xb) if transform is not None else xb, y[pick])
            yield (*out, [ids[j] for j in pick.tolist()]) if ids is not None else out


def _scalars(metrics: dict) -> dict[str, float]:
    """The per-epoch figures TensorBoard plots (losses and validation metrics; NaN ROC-AUC is left out)."""
    return {k: float(v) for k, v in metrics.items()
            if k not in ("epoch", "best_epoch", "resumed_from", "val_rows") and isinstance(v, (int, float))
            and not isinstance(v, bool) and v == v}  # fmt: skip


def tensorboard_writer(log_dir: str | None, start: int):
    """Rank 0's event-file writer; ``purge_step`` drops the points a restarted run redoes."""
    if not log_dir:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir, purge_step=start if start else None)


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
    """The deterministic error a fold's training recorded, if any."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def train_fold(config: dict) -> None:
    """The ``train_loop_per_worker`` of a fold's ``TorchTrainer``.

    A deterministic error in the loop (an exception from its own code, not a dead worker
    or node) is written to ``config["error_file"]`` and the worker returns: Ray Train does
    not retry it ``max_failures`` times. With several workers it is raised as well, so the
    group is torn down rather than left waiting in a collective; the retried attempt finds
    the file and returns at once.
    """
    import ray.train

    error_file = Path(config["error_file"])
    recorded = read_error(error_file)
    if recorded is not None:  # an earlier attempt failed deterministically: do not train again
        recorded["attempts"] += 1
        error_file.write_text(json.dumps(recorded))
        return
    try:
        _train_fold(config)
    except transient_errors():
        raise
    except Exception as exc:
        import traceback

        error_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "attempts": 1,
                                          "traceback": traceback.format_exc()}))  # fmt: skip
        if ray.train.get_context().get_world_size() > 1:
            raise


def _train_fold(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"] + config["fold"])
    images = config["kind"] == "images"
    model = models.build(config["kind"], inputs=config["inputs"], classes=config["classes"],
                         channels=config.get("channels") or 3, size=config.get("size") or 32,
                         name=config.get("model"), hidden=tuple(config["hidden"]), dropout=config["dropout"])  # fmt: skip
    model = ray.train.torch.prepare_model(model)
    optimizer = loop.make_optimizer(model, config["lr"], config["weight_decay"])
    steps = max(1, -(-config["train_rows"] // (config["batch_size"] * world)))
    scheduler = loop.cosine_with_warmup(optimizer, min(steps, config["warmup_steps"]), steps * config["epochs"])
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and config["amp"] else None
    stopper = loop.EarlyStopping(patience=config["patience"] if not config["final"] else 10**9)
    start, resumed = 0, None
    best_state = best_pred = None
    history: list[dict] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE, map_location=device, weights_only=True)
            start = resumed = loop.restore_state(state, model, optimizer, scheduler, stopper, scaler)
            history = json.loads((Path(d) / HISTORY).read_text())
            if (Path(d) / BEST).exists():
                best_state = torch.load(Path(d) / BEST, map_location="cpu", weights_only=True)
                best_pred = dict(np.load(Path(d) / PREDICTIONS, allow_pickle=False))
    train_tf = augment.augmenter(config["size"], config["channels"], config["flip"]) if images else None
    val_tf = augment.normalise if images else None
    mix = augment.mixer(config.get("mix"), config["classes"]) if images else None
    limit = config.get("worker_cache_mb", 0)
    train_data = ShardCache(ray.train.get_dataset_shard("train"), config["batch_size"], limit, shuffle=True,
                            seed=config["seed"] + 1000 * rank)  # fmt: skip
    val_data = ShardCache(ray.train.get_dataset_shard("val"), 4 * config["batch_size"], limit, shuffle=False,
                          with_ids=True)  # fmt: skip
    writer = tensorboard_writer(config.get("tensorboard_dir"), start) if rank == 0 else None
    for epoch in range(start, config["epochs"]):
        train_loss = loop.train_epoch(model, train_data.epoch(epoch, train_tf), optimizer, scheduler, device,
                                      scaler=scaler, transform=None, mix=mix)  # fmt: skip
        ev = loop.evaluate(model, val_data.epoch(epoch, val_tf), device, config["classes"])
        if config.get("crash_at_epoch") == epoch and not Path(config["crash_marker"]).exists():
            # Tests: the worker process dies mid-epoch, once. Ray Train's controller collects reports on its
            # health check (every 2 s); the delay lets it register the last checkpoint, as any real epoch would.
            time.sleep(6)
            Path(config["crash_marker"]).write_text(str(epoch))
            os._exit(1)
        improved = stopper.step(ev.loss, epoch) or config["final"]
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": ev.loss, "val_rows": len(ev.ids),
                   **{f"val_{k}": v for k, v in ev.metrics.items()}, "best_epoch": stopper.best_epoch,
                   "resumed_from": resumed}  # fmt: skip
        history.append(metrics)
        if writer is not None:
            for key, value in _scalars(metrics).items():
                writer.add_scalar(key, value, epoch)
            writer.flush()  # readable while the fold runs, and complete if the worker dies next
        if rank == 0:
            if improved:
                module = model.module if hasattr(model, "module") else model
                best_state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
                best_pred = {"ids": np.asarray(ev.ids, dtype=np.str_), "labels": ev.labels,
                             "probabilities": ev.probabilities, "confusion": np.asarray(ev.confusion),
                             "metrics": np.asarray(json.dumps({**ev.metrics, "loss": ev.loss, "epoch": epoch}))}  # fmt: skip
            with tempfile.TemporaryDirectory() as d:
                state = loop.checkpoint_state(model, optimizer, scheduler, epoch, stopper, config,
                                              config["delta_version"], scaler)  # fmt: skip
                torch.save(state, Path(d) / STATE)
                (Path(d) / HISTORY).write_text(json.dumps(history))
                if best_state is not None:
                    torch.save(best_state, Path(d) / BEST)
                    np.savez(Path(d) / PREDICTIONS, **best_pred)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if stopper.stop:
            break
    if writer is not None:
        writer.close()
