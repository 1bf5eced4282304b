"""The Ray side's settings: one schema for ``python -m training``'s flags and the YAML's ``train`` section.

``jobs/`` imports this module to validate a pipeline config's ``train`` section; it is the only
import that crosses from ``jobs/`` into ``training/`` (an import contract in pyproject.toml keeps
it so), which is why it imports neither Ray nor torch. The flags are generated from the same
fields (``add_flags``/``from_flags``), and ``to_flags`` turns a validated section back into them,
so a setting cannot exist on one side only.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# A progress event on the Ray side's stdout (`python -m training --progress`): this prefix, then one JSON object.
PROGRESS_PREFIX = "@fulcrum "
HEAD_PREFIX = "@fulcrum-ray-head "  # the line `python -m training.head` prints its address on
METRICS = ("accuracy", "macro_f1", "roc_auc", "log_loss", "brier", "ece")  # what each fold reports, in this order
Scored = Literal["macro_f1", "accuracy", "roc_auc"]  # higher is better: what a search or a curve may maximise
SCORED = typing.get_args(Scored)
ALGORITHMS = ("random", "bayesian")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchSettings(Strict):
    """``train.search``: a Ray Tune search scored by mean CV metric, ASHA stopping bad trials between epochs."""

    trials: int = Field(default=8, ge=2, description="configurations to try")
    algorithm: Literal["random", "bayesian"] = Field(default="random", description="bayesian: Optuna's TPE")
    folds: int | None = Field(default=None, ge=1, description="score trials on the first N folds (default: all)")
    epochs: int | None = Field(default=None, ge=1, description="epochs per fold of a trial (default: train.epochs)")
    metric: Scored = Field(default="macro_f1", description="maximised")
    asha: bool = Field(default=True, description="stop bad trials early with ASHA (false: every trial, every fold)")
    grace: int = Field(default=1, ge=1, description="epochs every trial trains before ASHA may stop it")
    reduction: int = Field(default=2, ge=2, description="ASHA keeps the best 1/reduction at each rung")
    lr: tuple[float, float] = Field(default=(1e-4, 1e-2), description="low, high (log-uniform)")
    weight_decay: tuple[float, float] = Field(default=(1e-6, 1e-2), description="low, high (log-uniform)")
    dropout: tuple[float, float] = Field(default=(0.0, 0.5), description="low, high (uniform)")
    batch_size: tuple[int, ...] = Field(default=(32, 64, 128), min_length=1, description="sizes to choose from")

    @model_validator(mode="after")
    def _ranges(self) -> SearchSettings:
        for name in ("lr", "weight_decay", "dropout"):
            lo, hi = getattr(self, name)
            floor = 0 if name == "dropout" else 1e-12
            if not floor <= lo <= hi or (name == "dropout" and hi >= 1):
                raise ValueError(f"search.{name} must be [low, high] with "
                                 f"{'0 <= low <= high < 1' if name == 'dropout' else '0 < low <= high'}, "
                                 f"got {[lo, hi]}")  # fmt: skip
        if min(self.batch_size) < 1:
            raise ValueError(f"search.batch_size must list sizes >= 1, got {list(self.batch_size)}")
        return self

    def check_folds(self, folds: int) -> None:
        """Raise ValueError when the search asks for more folds than the table has."""
        if self.folds is not None and self.folds > folds:
            raise ValueError(f"search.folds must be between 1 and the table's {folds} folds, got {self.folds}")


class TrainSettings(Strict):
    """``train``: the model, the optimiser, early stopping and how the Ray cluster runs it."""

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    hidden: tuple[int, ...] = Field(default=(128, 64), min_length=1, description="MLP hidden widths")
    patience: int = Field(default=5, ge=1, description="early stopping: epochs without a better validation loss")
    warmup_steps: int = Field(default=20, ge=0, description="linear learning-rate warm-up, in optimiser steps")
    class_weight: Literal["none", "balanced"] = Field(
        default="none", description="balanced: each slot's loss weighs class c by n / (classes x n_c) of its rows")
    model: Literal["mlp", "cnn", "resnet18"] | None = Field(default=None, description="default: from the table kind")
    workers: int = Field(default=1, ge=1, description="Ray Train workers of the run (data-parallel)")
    cpus_per_worker: float | None = Field(default=None, gt=0)
    use_gpu: bool | None = Field(default=None, description="default: when the cluster has GPUs")
    amp: bool = Field(default=True, description="mixed precision (float16 autocast, gradient scaler) on a GPU")
    mix: Literal["mixup", "cutmix"] | None = None
    flip: bool = Field(default=False, description="random horizontal flips of images (only where a mirrored image keeps its class)")
    augment: Literal["all", "flagged"] = Field(default="all", description="images: augment every training image, or "
                                               "only the rows gold flags (augment = true: repeated minority images)")
    max_failures: int = Field(default=2, ge=0, description="worker-group restarts from the last checkpoint")
    checkpoint_seconds: float = Field(default=10, ge=0, description="at least this long between a run's checkpoints "
                                      "(each one a Ray Train report); the last epoch of each phase always "
                                      "checkpoints; 0: every epoch")  # fmt: skip
    concurrency: int | None = Field(default=None, ge=1, description="search trials at once (default: what fits)")
    seed: int = Field(default=42, description="default in a pipeline config: its top-level seed")
    tensorboard: bool = Field(default=True, description="write per-epoch metrics as TensorBoard event files "
                              "under <reports>/<run_id>/train/tensorboard/")  # fmt: skip
    search: SearchSettings | None = Field(default=None, description="hyperparameter search before the CV (off)")

    def tuned(self, **update: Any) -> TrainSettings:
        """These settings with some fields replaced, validated again."""
        return type(self).model_validate({**self.model_dump(), **update})


def _scalar(annotation: Any) -> tuple[Any, bool]:
    """(the type a flag's text converts to, whether it is a comma-separated sequence)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _scalar(args[0])
    if origin is tuple:
        return args[0], True
    if origin is Literal:
        return str, False
    return annotation, False


def _convert(kind: Any, sequence: bool):
    one = {bool: lambda v: v.strip().lower() in ("1", "true", "yes")}.get(kind, kind)

    def convert(text: str):
        return tuple(one(v) for v in text.split(",")) if sequence else one(text)

    return convert


def _flag_fields(prefix: str = "") -> list[tuple[str, str, Any]]:
    """(flag, dest, field) for every setting: ``--name`` for train, ``--search-name`` for the search."""
    model = SearchSettings if prefix else TrainSettings
    hints = typing.get_type_hints(model)
    out = []
    for name, field in model.model_fields.items():
        if name == "search":
            continue
        dest = f"{prefix}{name}"
        out.append(("--" + dest.replace("_", "-"), dest, (hints[name], field)))
    return out


def add_flags(parser: argparse.ArgumentParser, search: bool = True) -> None:
    """One flag per setting (the search's as ``--search-*``, on when ``--search-trials`` is given)."""
    groups = [("", parser)]
    if search:
        groups.append(("search_", parser.add_argument_group("hyperparameter search (on with --search-trials)")))
    for prefix, group in groups:
        for flag, dest, (hint, field) in _flag_fields(prefix):
            kind, sequence = _scalar(hint)
            default = field.get_default(call_default_factory=True)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            group.add_argument(flag, dest=dest, type=_convert(kind, sequence), default=argparse.SUPPRESS,
                               help=f"{field.description or ''} (default: {shown})".strip())  # fmt: skip


def from_flags(args: argparse.Namespace) -> TrainSettings:
    """The settings the flags name; raises ValueError with pydantic's message when one is invalid."""
    given = vars(args)
    train = {dest: given[dest] for _, dest, _ in _flag_fields() if dest in given}
    search = {dest[7:]: given[dest] for _, dest, _ in _flag_fields("search_") if dest in given}
    if search:
        train["search"] = search
    try:
        return TrainSettings.model_validate(train)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid training settings: {problems}") from None


def to_flags(settings: TrainSettings) -> list[str]:
    """The flags that give ``from_flags`` these settings (unset optional fields left out)."""
    values = settings.model_dump(exclude={"search"})
    if settings.search is not None:
        values.update({f"search_{k}": v for k, v in settings.search.model_dump().items()})
    out = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return out
