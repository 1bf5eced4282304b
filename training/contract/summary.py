"""The console summary of a cross-validation run (`cv.json`): shared by `python -m training` and `fulcrum train`."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from training.contract.settings import METRICS


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    if summary.get("search"):
        print_search(summary["search"], console)
    members = summary.get("members", 1)
    folds = f"{summary['folds']} folds" + (f" × {members} models, their probabilities averaged" if members > 1 else "")
    table = Table(title=f"cross-validation: {summary['table']} v{summary['delta_version']} "
                        f"({folds}, {summary['concurrent_folds']} in one pass)", title_justify="left")  # fmt: skip
    for col in ("fold", "train rows", "val rows", "best epoch", *METRICS):
        table.add_column(col, justify="right", no_wrap=True)
    for f in summary["per_fold"]:
        table.add_row(str(f["fold"]), f"{f['train_rows']:,}", f"{f['val_rows']:,}", str(f["best_epoch"]),
                      *[f"{f[m]:.3f}" for m in METRICS])  # fmt: skip
    table.add_row("mean ± std", "", "", "", *[f"{summary['mean'][m]:.3f} ± {summary['std'][m]:.3f}" for m in METRICS],
                  style="bold")  # fmt: skip
    fin = summary["final"]
    if fin is not None and fin["test_rows"]:  # None: the folds only (`--no-final-model`)
        table.add_row("final → test", f"{fin['train_rows']:,}", f"{fin['test_rows']:,}", str(fin["epochs"]),
                      *[f"{fin['test_' + m]:.3f}" for m in METRICS])  # fmt: skip
    elif fin is not None:  # `split.test_fraction` 0: a final model, nothing held out to score it on
        table.add_row("final (no test part)", f"{fin['train_rows']:,}", "0", str(fin["epochs"]), *["–" for _ in METRICS])
    console.print(table)
    console.print(f"out-of-fold predictions: {summary['predictions']['path']} ({summary['predictions']['rows']:,} rows)")


def print_search(search: dict, console: Console) -> None:
    """The search in one table: the space, what ASHA stopped, and the configuration chosen."""
    table = Table(title=f"hyperparameter search: {search['trials']} {search['algorithm']} trials over "
                        f"{search['folds']} fold(s), {search['stopped_early']} stopped early by ASHA "
                        f"(after epoch(s) {', '.join(map(str, search['rungs'])) or '-'}), {search['seconds']:.0f} s",
                  title_justify="left")  # fmt: skip
    for col in ("", "lr", "weight decay", "dropout", "batch size", f"mean {search['metric']}"):
        table.add_column(col, justify="right", no_wrap=True)
    space = search["space"]
    table.add_row("space", "{:.1e} – {:.1e} (log)".format(*space["lr"]),
                  "{:.1e} – {:.1e} (log)".format(*space["weight_decay"]), "{:.2f} – {:.2f}".format(*space["dropout"]),
                  "/".join(map(str, space["batch_size"])), "")  # fmt: skip
    best = search["best"]["config"]
    table.add_row("best", f"{best['lr']:.2e}", f"{best['weight_decay']:.2e}", f"{best['dropout']:.2f}",
                  str(best["batch_size"]), f"{search['best']['score']:.3f}", style="bold")  # fmt: skip
    console.print(table)
