"""What the Spark side and the Ray side share besides the gold table: the training settings schema,
the metric names, how an image path resolves under the image root, and the console summary of a
cross-validation's ``cv.json`` (``training.contract.summary``).

This package is the only part of ``training/`` that ``jobs/`` imports (an import contract in
pyproject.toml, run by ``make lint`` and the tests, keeps it so), so it imports neither Ray nor torch.
"""

from training.contract.files import UnsafePath, as_mode, real_root, safe_join
from training.contract.jsonio import dump as write_json
from training.contract.jsonio import dumps as json_text
from training.contract.jsonio import load as read_json
from training.contract.settings import (
    HEAD_PREFIX,
    METRICS,
    PROGRESS_PREFIX,
    SCORED,
    Scored,
    SearchSettings,
    TrainSettings,
    add_flags,
    from_flags,
    to_flags,
)
from training.contract.summary import print_search, print_summary

__all__ = ["HEAD_PREFIX", "METRICS", "PROGRESS_PREFIX", "SCORED", "Scored", "SearchSettings", "TrainSettings", "UnsafePath", "add_flags", "as_mode",
           "from_flags", "json_text", "print_search", "print_summary", "read_json", "real_root", "safe_join", "to_flags",
           "write_json"]  # fmt: skip
