"""The run's JSON files (``cv.json``, ``fold-<f>.json``, ``search.json``, ``tradeoff.json``, ``audit.json``,
``balance.json``, ...) and progress events: strict JSON on disk, NaN again for fulcrum's own readers.

A metric can be undefined (ROC-AUC of a validation part with one class, any test metric of a run without a
test part, an empty calibration bin). Python writes that as ``NaN``, which is not JSON: JavaScript's
``JSON.parse``, Go's ``encoding/json`` and strict parsers refuse the whole file. ``strict`` writes it as
``null`` (infinities too); ``relaxed`` turns a ``null`` back into NaN where the key names a number, so
fulcrum's readers compute and format as before, while a ``null`` that means "none" (``final`` with no final
model, a setting left unset) stays ``None``.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

from training.contract.settings import METRICS

# Keys whose value is a measurement (a number or a list of numbers) in those files: a null there was NaN. The
# metrics and calibration bins of a CV, the candidates' table, the audit's model and noise estimate, the image
# near-duplicate self-check.
NUMERIC = frozenset({*METRICS, "confidence", "mean", "std", "value", "best", "score", "scores", "diff", "se",
                     "train_loss", "val_loss", "balanced_accuracy", "chance", "skill", "estimated_noise_rate",
                     "noise_rate", "thresholds", "accepted_share", "ratio", "threshold", "distance_0.1%"})  # fmt: skip


def strict(obj: Any) -> Any:
    """``obj`` with NaN and ±infinity as None, NumPy scalars and arrays as Python numbers and lists, tuples as
    lists: what ``json.dumps(..., allow_nan=False)`` accepts."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if hasattr(obj, "tolist"):  # a NumPy array or scalar that is not a number above
        return strict(obj.tolist())
    return obj


def relaxed(obj: Any, key: str | None = None) -> Any:
    """The inverse of ``strict`` for fulcrum's readers: ``None`` under a numeric key (``NUMERIC``, or any
    ``test_``/``val_`` metric) becomes NaN, in lists under it too."""
    if isinstance(obj, dict):
        return {k: relaxed(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relaxed(v, key) for v in obj]
    if obj is None and key is not None and _numeric(key):
        return math.nan
    return obj


def _numeric(key: str) -> bool:
    return key in NUMERIC or (
        key.startswith(("test_", "val_")) and key.removeprefix("test_").removeprefix("val_") in METRICS
    )


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (``strict``); anything else JSON cannot hold is written as ``str``."""
    return json.dumps(strict(obj), allow_nan=False, default=str, **kwargs)


def dump(obj: Any, path: Path | str, indent: int | None = 2) -> None:
    Path(path).write_text(dumps(obj, indent=indent))


def load(path: Path | str) -> Any:
    """A file ``dump`` wrote (or an older one with NaN in it), with NaN back where a number was undefined."""
    return relaxed(json.loads(Path(path).read_text()))
