"""Plots of a cross-validation run: metrics per fold, learning curves, the confusion matrix, the search."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fold_metrics(summary: dict, path: Path) -> None:
    plt = _plt()
    names = ["accuracy", "macro_f1", "roc_auc"]
    folds = summary["per_fold"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / (len(folds) + 1)
    for i, f in enumerate(folds):
        ax.bar(np.arange(len(names)) + i * width, [f[m] for m in names], width, label=f"fold {f['fold']}")
    ax.bar(np.arange(len(names)) + len(folds) * width, [summary["mean"][m] for m in names], width,
           yerr=[summary["std"][m] for m in names], color="black", label="mean ± std")  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylim(0, 1.05)
    ax.set_title("validation metrics per fold")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_curves(folds: list[dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for f in folds:
        epochs = [h["epoch"] for h in f["history"]]
        axes[0].plot(epochs, [h["train_loss"] for h in f["history"]], label=f"fold {f['fold']} train")
        axes[0].plot(epochs, [h["val_loss"] for h in f["history"]], "--", label=f"fold {f['fold']} val")
        axes[1].plot(epochs, [h["val_macro_f1"] for h in f["history"]], label=f"fold {f['fold']}")
    axes[0].set_title("loss")
    axes[1].set_title("validation macro-F1")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n, 1 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("out-of-fold confusion")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def search(summary: dict, path: Path) -> None:
    """Left: each trial's running mean against folds trained (stopped trials dashed, the best bold, ASHA's
    rungs dotted, a cross where a trial was stopped). Right: each trial's last running mean against its learning rate."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for t in summary["results"]:
        if not t["running"]:
            continue
        x = np.arange(1, len(t["running"]) + 1)
        style = {"lw": 2.5, "color": "black", "zorder": 3} if t["best"] else {"lw": 1, "alpha": 0.7}
        line = axes[0].plot(x, t["running"], "--" if t["stopped_early"] else "-", marker="o", ms=3, **style)[0]
        if t["stopped_early"]:  # where ASHA stopped it
            axes[0].plot(x[-1], t["running"][-1], "x", ms=8, color=line.get_color())
        axes[1].scatter(t["config"]["lr"], t["running"][-1], s=40 if t["best"] else 20,
                        facecolors="black" if t["best"] else ("none" if t["stopped_early"] else "C0"),
                        edgecolors="black" if t["best"] else "C0")  # fmt: skip
    for rung in summary["rungs"]:
        axes[0].axvline(rung, color="grey", ls=":", lw=1)
    metric = summary["metric"].replace("_", "-")
    axes[0].set_xlabel("folds trained")
    axes[0].set_ylabel(f"running mean {metric}")
    axes[0].set_xticks(range(1, summary["folds"] + 1))
    axes[0].set_title(f"{summary['trials']} trials, {summary['stopped_early']} stopped early by ASHA")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_minor_formatter(plt.NullFormatter())
    axes[1].set_xlabel("learning rate")
    axes[1].set_title("last running mean (hollow: stopped, black: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
