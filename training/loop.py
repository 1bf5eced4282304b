"""The training loop, plain PyTorch: one epoch, evaluation, the schedule, early stopping, checkpoints.

Nothing here knows about Ray: batches are any iterable of ``(x, y)`` tensors (or
``(x, y, ids)`` for evaluation), so the loop runs and is tested the same on a laptop and
inside a Ray Train worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and normalisation weights are not decayed."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}],
                             lr=lr)  # fmt: skip


def without_single_rows(batches: Iterable) -> Iterable:
    """``batches`` with no batch of one row: a last batch of one joins the batch before it.

    Batch normalisation cannot normalise one row in training mode (PyTorch raises
    ``Expected more than 1 value per channel``), and a training set of ``batch_size × n + 1``
    rows ends with such a batch. A set of a single row is repeated once (its gradient is the
    same), so every set size trains.
    """
    held = None
    for batch in batches:
        if held is not None and len(batch[1]) == 1:
            held = tuple(torch.cat([a, b]) for a, b in zip(held, batch, strict=True))
            continue
        if held is not None:
            yield held
        held = tuple(batch)
    if held is not None:
        yield tuple(torch.cat([a, a]) for a in held) if len(held[1]) == 1 else held


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    *,
    scaler: torch.amp.GradScaler | None = None,
    transform: Callable | None = None,
    mix: Callable | None = None,
) -> float:
    """One pass over ``batches``; returns the mean training loss. Mixed precision when ``scaler`` is set."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, rows = 0.0, 0
    for x, y in without_single_rows(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x)
        target = y
        if mix is not None:
            x, target = mix(x, y)
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
            loss = loss_fn(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(y)
        rows += len(y)
    return total / max(1, rows)


@dataclass
class Evaluation:
    loss: float
    metrics: dict[str, float]
    confusion: list[list[int]]
    ids: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, classes: int) -> Evaluation:
    """Loss and metrics over every row of ``batches`` (each ``(x, y)`` or ``(x, y, ids)``), with the
    predicted probabilities kept in row order."""
    model.eval()
    probs, labels, ids = [], [], []
    for batch in batches:
        x, y = batch[0].to(device), batch[1]
        probs.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
        labels.append(y.cpu().numpy())
        if len(batch) > 2:
            ids.extend(batch[2])
    p = np.concatenate(probs) if probs else np.zeros((0, classes))
    y = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64)
    return Evaluation(loss=log_loss(y, p), metrics=metrics(y, p, classes), confusion=confusion(y, p, classes),
                      ids=ids, labels=y, probabilities=p)  # fmt: skip


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    if not len(y):
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def confusion(y: np.ndarray, p: np.ndarray, classes: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, p.argmax(1), labels=list(range(classes))).tolist() if len(y) else []


def metrics(y: np.ndarray, p: np.ndarray, classes: int) -> dict[str, float]:
    """Accuracy, macro-F1, ROC-AUC (one-vs-rest, macro; NaN when a class is absent) and log loss."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    if not len(y):
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "roc_auc": float("nan"), "log_loss": float("nan")}
    pred = p.argmax(1)
    try:
        if classes == 2:
            auc = float(roc_auc_score(y, p[:, 1]))
        else:
            auc = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(classes))))
    except ValueError:  # a class missing from this set
        auc = float("nan")
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(classes)), zero_division=0)),
        "roc_auc": auc,
        "log_loss": log_loss(y, p),
    }


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience`` epochs."""

    patience: int = 5
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    bad: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the best so far."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad = state["best"], state["best_epoch"], state["bad"]


def checkpoint_state(model: nn.Module, optimizer, scheduler, epoch: int, stopper: EarlyStopping, config: dict,
                     version: int, scaler=None) -> dict:  # fmt: skip
    """Everything a run needs to continue: weights, optimizer, schedule, epoch, best metric, config, version."""
    module = model.module if hasattr(model, "module") else model
    return {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "early_stopping": stopper.state_dict(),
        "config": config,
        "delta_version": version,
    }


def restore_state(state: dict, model: nn.Module, optimizer, scheduler, stopper: EarlyStopping, scaler=None) -> int:
    """Load a checkpoint into live objects; returns the epoch to continue from."""
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    stopper.load_state_dict(state["early_stopping"])
    return int(state["epoch"]) + 1
