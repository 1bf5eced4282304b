"""The training loop, plain PyTorch: many models (slots) trained on shared batches, evaluation, the
schedule, early stopping, metrics.

Nothing here knows about Ray: rows are tensors and each slot's rows a boolean mask over them, so
the loop runs and is tested the same on a laptop and inside a Ray Train worker (which passes an
``allreduce`` to average gradients across workers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CHUNK_BYTES = 1 << 20  # features gathered at once by `batches`: a few batches' worth that stays in cache


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
    # The fused kernel updates every parameter in one call (CPU and CUDA): a small model's step is otherwise
    # dozens of tiny per-tensor operations, the bulk of its training time when many slots train at once.
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}],
                             lr=lr, fused=True)  # fmt: skip


@dataclass
class SlotModel:
    """One slot's training state: its model, optimiser, schedule, scaler and early stopping."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    stopper: EarlyStopping
    scaler: torch.amp.GradScaler | None = None
    stopped: bool = False
    class_weight: torch.Tensor | None = None  # per class, on the device: a weighted loss (``balanced_weights``)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "early_stopping": self.stopper.state_dict(), "stopped": self.stopped}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.stopped = bool(state["stopped"])


def spans_of(rows: int, batch_size: int, count: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each batch over ``rows`` rows (the first ``count``). A last batch of one row joins the
    batch before it: batch normalisation cannot normalise one row in training mode (the 64k+1 crash)."""
    bounds = list(range(0, rows, batch_size)) + [rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:], strict=True))[:count]


def batches_of(order: torch.Tensor, batch_size: int, count: int | None = None) -> list[torch.Tensor]:
    """The index batches of ``order`` (see ``spans_of``)."""
    return [order[a:b] for a, b in spans_of(len(order), batch_size, count)]


def grouped_order(groups: list[torch.Tensor], batch_size: int, generator: torch.Generator,
                  counts: list[int] | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:  # fmt: skip
    """Batches that each hold rows of one group only: each group's rows (already shuffled) cut into
    batches (``spans_of``; the first ``counts[g]`` of them), the batches of every group then put in one
    order drawn from ``generator``. Returns the rows in that order and each batch's ``(start, end)``.

    A trade-off table's quality levels are copies of the same rows and no slot trains on two of them: a
    batch mixing levels would give each slot a fraction of ``batch_size`` rows per step and as many more
    steps. With one level per batch a slot steps as often, on as many rows, as it would alone."""
    pieces = []
    for g, rows in enumerate(groups):
        spans = spans_of(len(rows), batch_size, None if counts is None else counts[g])
        pieces += [rows[a:b] for a, b in spans]
    pieces = [pieces[i] for i in torch.randperm(len(pieces), generator=generator).tolist()]
    bounds = np.cumsum([0] + [len(p) for p in pieces]).tolist()
    order = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    return order, list(zip(bounds[:-1], bounds[1:], strict=True))


def shuffled(rows: torch.Tensor, seed: int | tuple[int, ...]) -> torch.Tensor:
    """``rows`` in an order drawn from ``seed`` (NumPy's PCG64; a tuple of ints is one seed): one permuted
    copy, 2-4x faster on 800k rows than ``rows[torch.randperm(...)]``, which draws a permutation and then
    gathers through it (2 cores, 2026-12-04). The same seed gives the same order on every machine."""
    entropy = [v % 2**64 for v in ((seed,) if isinstance(seed, int) else seed)]  # SeedSequence takes no negatives
    return torch.from_numpy(np.random.default_rng(entropy).permutation(rows.numpy()))


def batches(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, order: torch.Tensor,
            spans: list[tuple[int, int]], flagged: torch.Tensor | None = None,
            chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:  # fmt: skip
    """The shared batches of rows ``order``: for each ``(start, end)`` of ``spans`` the rows' features, labels,
    masks (S×B) and flags, gathered from the read rows. The features land in one buffer that every batch
    reuses, so a batch is valid until the next one is drawn (the loop is done with it by then; a copy to a
    GPU from pageable memory has left the buffer when ``to`` returns). One buffer that stays in cache, not an
    epoch-sized copy each epoch: that copy faulted in its tens of MiB page by page (800k rows × 20 float32:
    gathers 0.035-0.14 s per epoch, per-batch gathers into the buffer 0.02-0.03 s; 2 cores, 2026-12-04).

    Consecutive batches are gathered together, up to ``chunk_bytes`` of features at a time (about 1 MiB, still
    in cache), and handed out as views: four gathers per chunk instead of four per batch cut the epoch's
    gathering from 0.026 s to 0.018 s on those rows at batch 1,024 (2 cores, 2026-12-04). Labels, masks and
    flags are fresh tensors per chunk, so a batch's own views of them stay valid."""
    widest = max((b - a for a, b in spans), default=0)
    limit = max(widest, chunk_bytes // max(1, x[0].numel() * x.element_size()) if len(x) else widest)
    chunks = _chunks(spans, limit)
    buffer = torch.empty((max((c[-1][1] - c[0][0] for c in chunks), default=0), *x.shape[1:]), dtype=x.dtype)
    rows = masks.t().contiguous()  # N×S: a batch's masks are then whole rows (3x faster than columns of S×N)
    for chunk in chunks:
        first, last = chunk[0][0], chunk[-1][1]
        index = order[first:last]
        xs = torch.index_select(x, 0, index, out=buffer[: last - first])
        ys, ms = torch.index_select(y, 0, index), torch.index_select(rows, 0, index)
        fs = None if flagged is None else torch.index_select(flagged, 0, index)
        for a, b in chunk:
            a, b = a - first, b - first
            yield xs[a:b], ys[a:b], ms[a:b].t(), None if fs is None else fs[a:b]


def _chunks(spans: list[tuple[int, int]], limit: int) -> list[list[tuple[int, int]]]:
    """``spans`` in runs of consecutive batches (one's end is the next one's start) of at most ``limit`` rows
    together (a batch wider than ``limit`` is a run of its own)."""
    chunks: list[list[tuple[int, int]]] = []
    for a, b in spans:
        if chunks and chunks[-1][-1][1] == a and b - chunks[-1][0][0] <= limit:
            chunks[-1].append((a, b))
        else:
            chunks.append([(a, b)])
    return chunks


def train_epoch(
    slots: list[SlotModel],
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    device: torch.device,
    *,
    transform: Callable | None = None,
    mix: Callable | None = None,
    steps: int | None = None,
    allreduce: Callable | None = None,
    flagged: torch.Tensor | None = None,
    plain: Callable | None = None,
    spans: list[tuple[int, int]] | None = None,
) -> list[float]:
    """One pass over the rows ``order`` in shared batches: each batch is moved (and augmented) once and
    every slot not stopped trains on its own rows of it (``masks``: bool S×N), a loss over those rows
    only. Returns each slot's mean training loss (NaN for a stopped slot).

    ``steps`` caps the batches (workers agree on one count); ``allreduce`` sums a flat tensor over the
    workers: each slot's gradient is then the mean over every worker's rows, as DDP would average it.
    With ``flagged`` (bool N), ``transform`` applies to the flagged rows only and ``plain`` to the others.
    ``spans`` gives the batches' ``(start, end)`` in ``order`` (``grouped_order``) instead of cutting it.
    """
    sums, rows = torch.zeros(len(slots), dtype=torch.float64), torch.zeros(len(slots), dtype=torch.float64)
    live = [s for s in slots if not s.stopped]
    for s in live:
        s.model.train()
    spans = spans if spans is not None else spans_of(len(order), batch_size, steps)
    for xb, yb, mb, fb in batches(x, y, masks, order, spans, flagged):
        # Moved first, then augmented there: on a GPU the augmentation runs on the GPU.
        xb = xb.to(device, non_blocking=True)
        xb = _transformed(xb, transform, None if fb is None else fb.to(device), plain)
        yb = yb.to(device, non_blocking=True)
        used = torch.zeros(len(slots), dtype=torch.float64)  # rows backpropagated per slot
        for i, s in enumerate(slots):
            if s.stopped:
                continue
            s.optimizer.zero_grad(set_to_none=True)
            sel = mb[i].nonzero().squeeze(1)
            if not len(sel):
                continue
            if len(sel) == 1:  # one row of this slot in the batch: batch norm needs two
                sel = sel.repeat(2)
            sel = sel.to(device)
            loss = backward_sum(s, xb[sel], yb[sel], mix)
            used[i] = len(sel)
            sums[i] += loss / len(sel) * float(mb[i].sum())
            rows[i] += float(mb[i].sum())
        total = _average_gradients(live, slots, used, allreduce) if allreduce is not None else used
        for i, s in enumerate(slots):
            if not s.stopped and total[i] > 0:
                step(s, 1.0 / float(total[i]))
    return [float(sums[i] / rows[i]) if rows[i] and not s.stopped else float("nan") for i, s in enumerate(slots)]


def _transformed(xb: torch.Tensor, transform: Callable | None, flags: torch.Tensor | None,
                 plain: Callable | None) -> torch.Tensor:  # fmt: skip
    if transform is None:
        return xb
    if flags is None:
        return transform(xb)
    out = plain(xb)
    if flags.any():
        out[flags] = transform(xb[flags]).to(out.dtype)
    return out


def backward_sum(s: SlotModel, x: torch.Tensor, y: torch.Tensor, mix: Callable | None = None) -> float:
    """Backpropagate the slot's summed loss over ``x`` (scaled when mixed precision is on)."""
    target = y
    if mix is not None:
        x, target = mix(x, y)
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=s.scaler is not None):
        loss = nn.functional.cross_entropy(s.model(x), target, weight=s.class_weight, reduction="sum")
    (s.scaler.scale(loss) if s.scaler is not None else loss).backward()
    return float(loss.detach())


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"``: n / (classes × n_c) from a slot's training rows per class
    (``counts``), so the weights average to 1 over those rows; a class with no rows gets 1."""
    counts = counts.double()
    n, k = counts.sum(), len(counts)
    return torch.where(counts > 0, n / (k * counts.clamp(min=1)), torch.ones_like(counts)).float()


def step(s: SlotModel, scale: float) -> None:
    """Scale the slot's summed gradient into a mean, then one optimiser and schedule step."""
    grads = [p.grad for p in s.model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, scale)  # one call for every gradient (clip_grad_norm_ does the same)
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    if s.scheduler is not None:
        s.scheduler.step()


def _average_gradients(live: list[SlotModel], slots: list[SlotModel], used: torch.Tensor,
                       allreduce: Callable) -> torch.Tensor:  # fmt: skip
    """Sum every live slot's gradient (zeros where a worker had none of its rows) and row count over the
    workers in one collective; returns the summed counts (a slot steps when any worker had rows)."""
    params = [p for s in live for p in s.model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([used.to(params[0].device, torch.float32)] + [p.grad.reshape(-1).float() for p in params])
    flat = allreduce(flat)
    offset = len(slots)
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()
    return flat[: len(slots)].double().cpu()


@torch.no_grad()
def evaluate(
    slots: list[SlotModel],
    x: torch.Tensor,
    masks: torch.Tensor,
    batch_size: int,
    device: torch.device,
    classes: int,
    *,
    transform: Callable | None = None,
) -> list[np.ndarray]:
    """Each slot's predicted probabilities for its own rows (``masks``: bool S×N), in row order: every
    row of the union is moved once per batch and scored by the slots it belongs to."""
    union = masks.any(0).nonzero().squeeze(1)
    out: list[list[np.ndarray]] = [[] for _ in slots]
    for s in slots:
        s.model.eval()
    for start in range(0, len(union), batch_size):
        pick = union[start : start + batch_size]
        xb = x[pick]
        xb = xb.to(device, non_blocking=True)
        xb = transform(xb) if transform is not None else xb
        mb = masks[:, pick]
        for i, s in enumerate(slots):
            sel = mb[i].nonzero().squeeze(1)
            if len(sel):
                out[i].append(torch.softmax(s.model(xb[sel.to(device)]).float(), dim=1).cpu().numpy())
    return [np.concatenate(p) if p else np.zeros((0, classes)) for p in out]


@dataclass
class Evaluation:
    loss: float
    metrics: dict[str, float]
    confusion: list[list[int]]


def score(y: np.ndarray, p: np.ndarray, classes: int) -> Evaluation:
    """Loss, metrics and confusion matrix of probabilities ``p`` for labels ``y``."""
    return Evaluation(loss=log_loss(y, p), metrics=metrics(y, p, classes), confusion=confusion(y, p, classes))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    if not len(y):
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def confusion_counts(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class (scikit-learn's ``confusion_matrix`` with ``labels``)."""
    return np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)


def confusion(y: np.ndarray, p: np.ndarray, classes: int) -> list[list[int]]:
    return confusion_counts(y, p.argmax(1), classes).tolist() if len(y) else []


CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017), "On Calibration of Modern Neural Networks"


def reliability(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Top-label calibration of probabilities ``p`` for labels ``y``: per equal-width confidence bin its rows,
    mean confidence (the top probability) and accuracy, and the expected calibration error, the rows-weighted
    mean of |accuracy − confidence| over the bins (Guo et al. 2017)."""
    if not len(y):
        return {"bins": bins, "rows": [0] * bins, "confidence": [float("nan")] * bins,
                "accuracy": [float("nan")] * bins, "ece": float("nan")}  # fmt: skip
    conf, right = p.max(1), (p.argmax(1) == y).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)  # bin b holds (b/bins, (b+1)/bins]; 1.0 in the last
    which = np.where((conf * bins == which) & (which > 0), which - 1, which)  # an edge belongs to the bin below
    rows = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, minlength=bins) / rows
        accuracy = np.bincount(which, right, minlength=bins) / rows
    ece = float(np.nansum(rows * np.abs(accuracy - mean_conf)) / len(y))
    return {"bins": bins, "rows": rows.tolist(), "confidence": mean_conf.tolist(), "accuracy": accuracy.tolist(),
            "ece": ece}  # fmt: skip


def metrics(y: np.ndarray, p: np.ndarray, classes: int) -> dict[str, float]:
    """Accuracy, macro-F1, ROC-AUC (one-vs-rest, macro; NaN when a class is absent), log loss, the Brier score
    (scikit-learn's: halved for two classes, the multi-class sum over classes otherwise) and the expected
    calibration error (``reliability``)."""
    if not len(y):
        return {m: float("nan") for m in ("accuracy", "macro_f1", "roc_auc", "log_loss", "brier", "ece")}
    # Every metric from the counts and the probabilities directly: scikit-learn's checks of its arguments cost
    # ~20 ms a call, every slot is scored after every epoch, and importing scikit-learn's metrics costs each
    # worker process over a second (a test holds all of them equal to scikit-learn's).
    pred = p.argmax(1)
    cm = confusion_counts(y, pred, classes)
    tp = np.diag(cm).astype(float)
    f1 = np.divide(2 * tp, cm.sum(0) + cm.sum(1), out=np.zeros(classes), where=(cm.sum(0) + cm.sum(1)) > 0)
    onehot = np.eye(classes)[y]
    brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)) / (2 if classes == 2 else 1))
    present = np.bincount(y, minlength=classes) > 0
    if not present.all():  # a class missing from this set (scikit-learn raises; the figure is undefined)
        auc = float("nan")
    elif classes == 2:
        auc = binary_auc(y == 1, p[:, 1])
    else:  # one-vs-rest, the unweighted mean over the classes
        auc = float(np.mean([binary_auc(y == c, p[:, c]) for c in range(classes)]))
    return {
        "accuracy": float(tp.sum() / len(y)),
        "macro_f1": float(f1.mean()),
        "roc_auc": auc,
        "log_loss": log_loss(y, p),
        "brier": brier,
        "ece": reliability(y, p)["ece"],
    }


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` rows: the Mann-Whitney statistic with tied
    scores at their average rank (what scikit-learn's trapezoidal ``roc_auc_score`` equals); NaN for one class."""
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if not n1 or not n0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.reshape(-1)]  # 1-based, ties averaged
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


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
