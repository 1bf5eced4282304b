"""The training engine on a GPU, each figure beside its peer from the same run (issue 22 (e)).

  engine: ResNet-18 at 32 and 128 px with mixed precision through ``training.loop`` (images/s, and the GPU's
          utilisation sampled by nvidia-smi every 200 ms during the timed epoch; target ≥ 90 % at 128 px), beside a
          plain PyTorch loop over the same model, batches and augmentation; then the tabular MLP: five fold slots
          plus the final model in one pass, beside six plain passes of one model each.
  cv:     one cross-validation of a gold table (every fold and the final model in one pass per epoch). With Ray
          installed it is ``python -m training``; without it (a GPU node that has only PyTorch), the same worker
          code runs in-process, as a search trial runs it (``training.worker.train_slots`` with a report callback).

    python tests/bench/gpu_check.py engine --device cuda --out DIR
    python tests/bench/gpu_check.py cv --table LAKE/digits/gold --device cuda --out DIR
    (``--small``: tiny sizes, to try the code on a CPU.)  ``tests/bench/gpu_check.sh`` runs both.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training import augment, loop, models  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sampled(fn, device: torch.device) -> tuple[float, float | None, int]:
    """Run ``fn`` while nvidia-smi samples the GPU's utilisation every 200 ms: (seconds, mean %, samples)."""
    smi = log = None
    if device.type == "cuda":
        log = tempfile.NamedTemporaryFile("w+", suffix=".csv")  # noqa: SIM115 (read back below, then closed)
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                "-lms", "200", "-i", str(device.index or 0)], stdout=log)  # fmt: skip
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    if smi is None:
        return seconds, None, 0
    smi.terminate()
    smi.wait()
    with log:
        log.seek(0)
        values = [float(v) for v in log.read().split() if v.strip().replace(".", "").isdigit()]
    return seconds, (sum(values) / len(values) if values else None), len(values)


def slot(net: nn.Module, steps: int, device: torch.device) -> loop.SlotModel:
    """A slot as the worker builds it: float16 autocast with a gradient scaler on a GPU."""
    opt = loop.make_optimizer(net, 1e-3, 1e-4)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    return loop.SlotModel(net, opt, loop.cosine_with_warmup(opt, 5, steps), loop.EarlyStopping(), scaler)


def plain_epoch(s: loop.SlotModel, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device,
                transform=None, rows: torch.Tensor | None = None) -> None:  # fmt: skip
    """The peer: the loop anyone writes by hand (shuffle, index, move, augment, mean loss, step)."""
    order = torch.randperm(len(x)) if rows is None else rows[torch.randperm(len(rows))]
    s.model.train()
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        if transform is not None:
            xb = transform(xb)
        with torch.autocast(device.type, dtype=torch.float16, enabled=s.scaler is not None):
            loss = nn.functional.cross_entropy(s.model(xb), yb)
        s.optimizer.zero_grad(set_to_none=True)
        if s.scaler is not None:
            s.scaler.scale(loss).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            loss.backward()
            s.optimizer.step()
        s.scheduler.step()


def augment_only(x: torch.Tensor, batch: int, device: torch.device, transform) -> None:
    """The augmentation's share of an epoch: the same batches, moved and augmented, no model."""
    order = torch.randperm(len(x), device=x.device)
    for i in range(0, len(x), batch):
        transform(x[order[i : i + batch]].to(device, non_blocking=True))


def resnet(size: int, images: int, batch: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    every = torch.ones(1, images, dtype=torch.bool)
    tf = augment.augmenter(size, 3, True)
    steps = 10 * math.ceil(images / batch)
    ours = [slot(models.build("images", classes=10, channels=3, size=size).to(device), steps, device)]
    theirs = slot(models.build("images", classes=10, channels=3, size=size).to(device), steps, device)

    def mine():
        loop.train_epoch(ours, x, y, every, torch.randperm(images), batch, device, transform=tf)

    def peer():
        plain_epoch(theirs, x, y, batch, device, tf)

    mine(), peer()  # warm-up: cuDNN autotuning, the allocator
    seconds, util, n = sampled(mine, device)
    p_seconds, p_util, _ = sampled(peer, device)
    a_seconds, _, _ = sampled(lambda: augment_only(x, batch, device, tf), device)
    return {"images": images, "batch": batch, "amp": ours[0].scaler is not None, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
            "gpu_util_mean_pct": util and round(util, 1), "util_samples": n,
            "augment_only_seconds": round(a_seconds, 2),
            "plain_loop_images_per_s": round(images / p_seconds, 1), "plain_loop_gpu_util_pct": p_util and round(p_util, 1),
            "vs_plain_loop": round(p_seconds / seconds, 2)}  # fmt: skip


def mlp(rows: int, width: int, batch: int, device: torch.device) -> dict:
    x, y = torch.randn(rows, width), torch.randint(0, 3, (rows,))
    masks = torch.stack([torch.arange(rows) % 5 != f for f in range(5)] + [torch.ones(rows, dtype=torch.bool)])
    steps = 10 * math.ceil(rows / batch)
    slots = [slot(models.build("tabular", inputs=width, classes=3).to(device), steps, device) for _ in range(6)]
    singles = [slot(models.build("tabular", inputs=width, classes=3).to(device), steps, device)
               for _ in range(6)]  # fmt: skip
    fold_rows = [m.nonzero().squeeze(1) for m in masks]

    def mine():
        loop.train_epoch(slots, x, y, masks, torch.randperm(rows), batch, device)

    def peer():
        for s, r in zip(singles, fold_rows, strict=True):
            plain_epoch(s, x, y, batch, device, rows=r)

    mine(), peer()
    seconds, util, _ = sampled(mine, device)
    p_seconds, p_util, _ = sampled(peer, device)
    return {"rows": rows, "batch": batch, "seconds": round(seconds, 2),
            "slot_rows_per_s": round(int(masks.sum()) / seconds), "gpu_util_mean_pct": util and round(util, 1),
            "six_plain_passes_seconds": round(p_seconds, 2), "six_plain_passes_gpu_util_pct": p_util and round(p_util, 1),
            "vs_six_plain_passes": round(p_seconds / seconds, 2)}  # fmt: skip


def engine(device: torch.device, small: bool) -> dict:
    figures: dict = {}
    sizes = ((32, 512, 64), (64, 256, 64)) if small else ((32, 50_000, 256), (128, 20_000, 128), (128, 20_000, 512))
    for size, images, batch in sizes:
        key = f"resnet18_{size}px_batch{batch}"
        figures[key] = resnet(size, images, batch, device)
        print(json.dumps({key: figures[key]}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    figures["mlp_6_slots"] = mlp(*((4_000, 20, 256) if small else (1_000_000, 20, 4_096)), device)
    print(json.dumps({"mlp_6_slots": figures["mlp_6_slots"]}), flush=True)
    return figures


def cross_validation(table: str, device: torch.device, epochs: int, out: Path, in_process: bool = False) -> dict:
    """One CV of ``table`` on ``device``: ``python -m training`` where Ray is installed (unless ``in_process``),
    else the worker code in this process."""
    try:
        import ray  # noqa: F401

        has_ray = not in_process
    except ImportError:
        has_ray = False
    start = time.perf_counter()
    if has_ray:
        subprocess.run([sys.executable, "-m", "training", "--table", table, "--out", str(out), "--epochs", str(epochs),
                        "--use-gpu", str(device.type == "cuda").lower(), "--tensorboard", "false"], check=True)  # fmt: skip
        cv = json.loads((out / "cv.json").read_text())
        seconds = time.perf_counter() - start
        return {"how": "python -m training (Ray Train)", "seconds": round(seconds, 1), "use_gpu": cv["use_gpu"],
                "folds": cv["folds"], "mean_accuracy": round(cv["mean"]["accuracy"], 3),
                "mean_macro_f1": round(cv["mean"]["macro_f1"], 3), "test_accuracy": round(cv["final"]["test_accuracy"], 3)}  # fmt: skip
    from training.contract.settings import TrainSettings
    from training.cv import slot_config
    from training.engine import cv_slots
    from training.gold import Gold
    from training.worker import read_error, train_slots

    gold = Gold.open(table)
    s = TrainSettings(epochs=epochs, use_gpu=device.type == "cuda", tensorboard=False)
    out.mkdir(parents=True, exist_ok=True)
    config = {**slot_config(gold, s, cv_slots(gold.folds), out, final=True), "use_gpu": device.type == "cuda"}
    results = train_slots(config, report=lambda metrics: None)
    seconds = time.perf_counter() - start
    if results is None:
        raise SystemExit(f"the CV failed: {(read_error(config['error_file']) or {}).get('error')}")
    folds = [results[f"fold-{f}"]["metrics"] for f in range(gold.folds)]
    final = results["final"]["metrics"]
    return {"how": "training.worker in-process" + ("" if in_process else " (no Ray on this machine)"), "seconds": round(seconds, 1),
            "device": str(device), "kind": gold.kind, "folds": gold.folds, "epochs": epochs,
            "final_epochs": results["final_epochs"]["epochs"],
            "mean_accuracy": round(sum(f["accuracy"] for f in folds) / len(folds), 3),
            "mean_macro_f1": round(sum(f["macro_f1"] for f in folds) / len(folds), 3),
            "test_accuracy": round(final["accuracy"], 3), "test_macro_f1": round(final["macro_f1"], 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["engine", "cv"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny sizes (try the code on a CPU)")
    p.add_argument("--table", help="cv: the gold table")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--in-process", action="store_true", help="cv: the worker code in this process even with Ray")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA device: this check needs a GPU (or --device cpu)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "python": sys.version.split()[0]}  # fmt: skip
    if args.what == "engine":
        figures = {**info, **engine(device, args.small)}
        name = "gpu_engine.json"
    else:
        if not args.table:
            p.error("cv needs --table")
        work = Path(tempfile.mkdtemp()) / "cv"
        figures = {**info, "table": args.table, **cross_validation(args.table, device, args.epochs, work, args.in_process)}
        suffix = "_in_process" if args.in_process else ""
        name = f"gpu_cv_{Path(args.table).parent.name}_{device.type}{suffix}.json"
    (out / name).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
