"""Model slots: many models trained in one pass over the table.

A training run holds a set of *slots*, each a row mask over gold (``Slot.masks``): fold f
trains on the real rows with ``fold ∉ {f, −1}`` not undersampled out of it plus the rows with
``synthetic_for = f`` and validates on the real rows with ``fold = f``; the final model (f = k)
trains on every real non-test row plus ``synthetic_for = k`` and is scored on the test part; a
trade-off cell adds its quality level and the fraction of its training groups. Every shared
batch is decoded once and each slot trains on its own rows of it (its loss over those rows
only), validates on its own rows and early-stops on its own (``training.worker``).

Slots that do not fit one device together are split into groups (``plan_groups``), each
group one worker group; a slot's memory is estimated from its parameters (weights, gradients
and AdamW's two moments) and the activations of one batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from training.gold import Contract, training_mask, validation_mask


@dataclass(frozen=True)
class Slot:
    """One model of a run: a fold (``fold`` < folds), the final model (``fold`` = folds), or a trade-off
    cell (a fold at one quality ``level`` with a ``fraction`` of its training groups)."""

    fold: int
    level: str | None = None
    fraction: float = 1.0
    final: bool = False  # the final model: ``fold`` is the number of folds, scored on the test part
    class_weight: str | None = None  # ``balanced``: this slot's loss weighs classes, whatever the run's setting
    member: int = 0  # an ensemble's other models of the same rows (``ensemble_slots``): each its own initial weights

    @property
    def name(self) -> str:
        suffix = f"-m{self.member}" if self.member else ""
        if self.final:
            return "final" + suffix
        base = f"fold-{self.fold}" + ("-balanced" if self.class_weight == "balanced" and self.level is None else "")
        return (base if self.level is None else f"{self.level}-{self.fraction:g}-{base}") + suffix

    def masks(self, contract: pa.Table | Contract, folds: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of this slot among ``contract``'s rows (a table, or its
        ``Contract`` arrays converted once for many slots)."""
        contract = Contract.of(contract)
        train, val = training_mask(contract, self.fold, folds), validation_mask(contract, self.fold, folds)
        if self.level is not None:
            mine = contract.level(self.level)
            train, val = train & mine, val & mine
        if self.fraction < 1.0:
            train = train & (contract.u < self.fraction)
        return train, val


def cv_slots(folds: int, first: int | None = None) -> list[Slot]:
    """The folds of a cross-validation (the first ``first`` of them)."""
    return [Slot(f) for f in range(first or folds)]


def ensemble_slots(slots: list[Slot], members: int) -> list[Slot]:
    """``slots`` and, for ``members`` > 1, ``members - 1`` more of each: the same rows, other initial weights (a
    slot's seed comes from its name), trained in the same pass; their probabilities are averaged (``cv.average``)."""
    return [*slots, *(dataclasses.replace(s, member=m) for m in range(1, members) for s in slots)]


def grid_slots(levels: list[str], fractions: list[float], folds: list[int], weighted: list[str] = ()) -> list[Slot]:
    """Every cell of a trade-off grid (the levels in ``weighted`` train with a class-balanced loss)."""
    return [Slot(f, lv, fr, class_weight="balanced" if lv in weighted else None)
            for lv in levels for fr in fractions for f in folds]  # fmt: skip


class SlotInput(nn.Module):
    """A slot's own view of the shared tabular features: missing numeric values at its training mean,
    numeric columns standardised with its training rows' statistics, one-hot columns of categories its
    training rows never had set to zero. Saved with the model, so the weights carry their encoding."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.register_buffer("keep", keep.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.mean.shape[0]
        num = x[:, :n]
        num = (torch.where(torch.isnan(num), self.mean, num) - self.mean) / self.std
        return torch.cat([num, x[:, n:] * self.keep], dim=1)


def slot_bytes(model: nn.Module, batch_size: int, row_bytes: int) -> int:
    """A slot's training memory: parameters ×4 (weights, gradients, AdamW's moments) plus one batch's
    activations, taken as 64 float32 values per input value (a ResNet at small sizes keeps fewer)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return 4 * params + 64 * batch_size * row_bytes


def plan_groups(slots: int, per_slot: int, budget: int) -> list[range]:
    """Consecutive ranges of slot indices whose memory fits ``budget`` together (at least one slot each)."""
    fit = max(1, budget // max(1, per_slot))
    groups = math.ceil(slots / fit)
    size = math.ceil(slots / groups)  # even groups
    return [range(i, min(slots, i + size)) for i in range(0, slots, size)]
