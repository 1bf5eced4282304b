"""Every figure fulcrum draws, each a function of a stage's own JSON-able summary, saved as a PNG.

The one owner of matplotlib (headless ``Agg``): stages call these after their work, the train stage
draws the Ray side's figures from ``cv.json`` and ``search.json`` (the Ray side draws nothing), and
the run report embeds the files as data URIs.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from training.contract import METRICS, SCORED


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticker():
    import matplotlib.ticker

    return matplotlib.ticker


def data_uri(png: Path | bytes) -> str:
    """A PNG (a file or its bytes) as a ``data:`` URI, so a page can be mailed without its folder."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def save(fig, path: Path) -> None:
    """Lay out, write ``path`` (making its folder) and free the figure."""
    plt = _pyplot()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure made with its own layout (constrained) keeps it
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fold_counts(counts: dict[str, dict[str, int]], path: Path) -> None:
    plt = _pyplot()

    folds = sorted({int(f) for per in counts.values() for f in per})
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(folds), 3.2))
    bottom = [0] * len(folds)
    for cls in sorted(counts):
        values = [counts[cls].get(str(f), 0) for f in folds]
        ax.bar([str(f) if f >= 0 else "test" for f in folds], values, bottom=bottom, label=cls)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("fold")
    ax.set_ylabel("rows")
    ax.set_title("silver: class counts per fold")
    ax.legend(fontsize="small", ncols=2 if len(counts) > 4 else 1, loc="upper left", bbox_to_anchor=(1, 1))
    save(fig, path)


def class_balance(balance: dict, path: Path) -> None:
    plt = _pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    sets = list(balance["before"])
    classes = sorted(next(iter(balance["before"].values())))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, key in zip(axes, ("before", "after"), strict=True):
        bottom = [0] * len(sets)
        for cls in classes:
            values = [balance[key][s][cls] for s in sets]
            ax.bar(["final" if s == sets[-1] else s for s in sets], values, bottom=bottom, label=cls)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(f"training sets, {key} oversampling")
        ax.set_xlabel("fold")
    axes[0].set_ylabel("rows")
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    save(fig, path)


def audit_estimate(est: dict, path: Path) -> None:
    """The confident joint (counts) beside the estimated noise matrix P(given | true), written to ``path``."""
    save(audit_figure(est), path)


def audit_figure(est: dict):
    """The audit's two heat maps as a figure (see ``audit_estimate``)."""
    plt = _pyplot()

    k = len(est["classes"])
    # Sized for the content: cells big enough for their numbers (at least 2.8 in of matrix for two classes),
    # room for the class names, and constrained layout so titles and labels never overlap.
    side = max(2.8, (0.5 if k > 6 else 0.8) * k)
    label = max(len(str(c)) for c in est["classes"]) * 0.07
    fig, axes = plt.subplots(1, 2, figsize=(2 * (side + label + 0.9), side + 2 * label + 1.6), squeeze=False,
                             layout="constrained")  # fmt: skip
    size = 7 if k > 8 else 9 if k > 4 else 11
    for ax, key, title, fmt in ((axes[0][0], "confident_joint", "confident joint C\n(rows)", "d"),
                                (axes[0][1], "noise_matrix", "noise matrix\nP(given | true)", ".2f")):  # fmt: skip
        m = np.asarray(est[key])
        shade = m if key == "noise_matrix" else np.log1p(m)
        ax.imshow(shade, cmap="Blues", vmin=0, vmax=max(float(np.max(shade)), 1e-9))
        dark = 0.55 * max(float(np.max(shade)), 1e-9)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=size,
                    color="white" if shade[i, j] > dark else "black")  # fmt: skip
        ax.set_xticks(range(k), est["classes"], rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center",
                      fontsize=8)  # fmt: skip
        ax.set_yticks(range(k), est["classes"], fontsize=8)
        ax.set_xlabel("true (confident) class", fontsize=9)
        ax.set_ylabel("given label", fontsize=9)
        ax.set_title(title, fontsize=10)
    return fig


def tradeoff_curves(curve: dict[str, list[dict]], metric: str, names: dict[str, str], path: Path) -> None:
    """One axes: the metric against training rows (log scale), a line and a ± std band per level."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for level in [lv for lv in names if lv in curve]:
        pts = curve[level]
        x = [p["rows"] for p in pts]
        y = np.array([p["mean"] for p in pts])
        sd = np.array([p["std"] for p in pts])
        line = ax.plot(x, y, marker="o", label=names[level])[0]
        ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xscale("log")
    plain = _ticker().FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize="x-small")
    ax.set_xlabel("real training rows per fold (log scale)")
    ax.set_ylabel(f"validation {metric.replace('_', '-')} (mean ± std over folds)")
    ax.set_title("quality vs quantity: learning curve per quality level")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    save(fig, path)


def fold_metrics(summary: dict, path: Path) -> None:
    plt = _pyplot()
    names = [m for m in METRICS if m in SCORED]  # higher is better, in [0, 1]
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
    save(fig, path)


def learning_curves(folds: list[dict], path: Path) -> None:
    plt = _pyplot()
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
    save(fig, path)


def confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    plt = _pyplot()
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
    save(fig, path)


def reliability(calibration: dict, path: Path) -> None:
    """The reliability diagram: per confidence bin, accuracy against mean confidence (the diagonal is perfect
    calibration; below it the model is over-confident), for the pooled out-of-fold rows and the test part,
    with each bin's share of the rows under it and the expected calibration error in the legend."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for (name, r), colour in zip(calibration.items(), ("tab:blue", "tab:orange"), strict=False):
        rows = np.asarray(r["rows"], dtype=float)
        if not rows.sum():
            continue
        keep = rows > 0
        conf, acc = np.asarray(r["confidence"], dtype=float), np.asarray(r["accuracy"], dtype=float)
        ax.plot(conf[keep], acc[keep], marker="o", color=colour,
                label=f"{name.replace('_', '-')} (ECE {r['ece']:.3f}, {int(rows.sum()):,} rows)")  # fmt: skip
        edges = np.linspace(0, 1, r["bins"] + 1)
        hist.bar(edges[:-1], rows / rows.sum(), width=1 / r["bins"], align="edge", alpha=0.5, color=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("reliability: top-class confidence vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    hist.set_xlabel("confidence (probability of the predicted class)")
    hist.set_ylabel("share of rows")
    hist.grid(alpha=0.3)
    save(fig, path)


def search(summary: dict, path: Path) -> None:
    """Left: each trial's mean metric over its folds against epochs trained (stopped trials dashed, the best
    bold, ASHA's rungs dotted, a cross where a trial was stopped). Right: each trial's last mean against its
    learning rate."""
    plt = _pyplot()
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
    axes[0].set_xlabel("epochs trained")
    axes[0].set_ylabel(f"mean {metric} over the folds")
    axes[0].set_title(f"{summary['trials']} trials, {summary['stopped_early']} stopped early by ASHA")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_minor_formatter(plt.NullFormatter())
    axes[1].set_xlabel("learning rate")
    axes[1].set_title("last mean (hollow: stopped, black: best)")
    save(fig, path)


def metric_trend(metric: str, runs: list[str], values: list[float | None], current: str, path: Path,
                 anomaly: str | None = None) -> None:  # fmt: skip
    """One metric over the runs (oldest first): the line, the median of the earlier runs, this run in red."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 2.8), layout="constrained")
    xs = [i for i, v in enumerate(values) if v is not None]
    ys = [values[i] for i in xs]
    ax.plot(xs, ys, marker="o", color="#4477aa", linewidth=1.2)
    i = runs.index(current) if current in runs else None
    earlier = [v for j, v in enumerate(values) if v is not None and (i is None or j < i)]
    if earlier:
        ax.axhline(float(np.median(earlier)), color="#999", linestyle="--", linewidth=1, label="median of earlier runs")
    if i is not None and values[i] is not None:
        ax.plot([i], [values[i]], marker="o", markersize=9, color="#cc3311", label="this run", linestyle="none")
    step = max(1, len(runs) // 8)
    ax.set_xticks(range(0, len(runs), step), [r[:15] for r in runs][::step], rotation=30, ha="right", fontsize=7)
    ax.set_title(metric, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")
    if anomaly:
        ax.set_xlabel(anomaly if len(anomaly) < 110 else anomaly[:107] + "...", fontsize=7)
    save(fig, path)
