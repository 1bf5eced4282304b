"""The console summary of a cross-validation run."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

METRICS = ("accuracy", "macro_f1", "roc_auc", "log_loss")


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"cross-validation: {summary['table']} v{summary['delta_version']} "
                        f"({summary['folds']} folds, {summary['concurrent_folds']} at once)", title_justify="left")  # fmt: skip
    for col in ("fold", "train rows", "val rows", "best epoch", *METRICS):
        table.add_column(col, justify="right", no_wrap=True)
    for f in summary["per_fold"]:
        table.add_row(str(f["fold"]), f"{f['train_rows']:,}", f"{f['val_rows']:,}", str(f["best_epoch"]),
                      *[f"{f[m]:.3f}" for m in METRICS])  # fmt: skip
    table.add_row("mean ± std", "", "", "", *[f"{summary['mean'][m]:.3f} ± {summary['std'][m]:.3f}" for m in METRICS],
                  style="bold")  # fmt: skip
    fin = summary["final"]
    table.add_row("final → test", f"{fin['train_rows']:,}", f"{fin['test_rows']:,}", str(fin["epochs"]),
                  *[f"{fin['test_' + m]:.3f}" for m in METRICS])  # fmt: skip
    console.print(table)
    console.print(f"out-of-fold predictions: {summary['predictions']['path']} ({summary['predictions']['rows']:,} rows)")
