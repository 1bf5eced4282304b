#!/usr/bin/env bash
# The training engine on a CUDA GPU, in one short run (under 8 minutes on one modern GPU):
#   1. ResNet-18 at 32 and 128 px with AMP through training.loop: images/s, and the GPU's
#      utilisation sampled by nvidia-smi every 200 ms during the timed epoch (target ≥ 90 % at 128 px);
#   2. the tabular MLP: rows/s of five fold slots plus the final model in one pass;
#   3. one cross-validation of the digits sample on the GPU (Spark stages to gold, then python -m training).
# Writes its figures as JSON to ${OUT:-bench-results}/gpu_check.json and prints them.
#   bash tests/bench/gpu_check.sh            # from the repository root, after `make setup`
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT:-bench-results}
mkdir -p "$OUT_DIR"
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this check needs a CUDA GPU"; exit 2; }
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$PY" - "$WORK" <<'EOF'
import json, math, subprocess, sys, time
from pathlib import Path
import torch
from training import augment, loop, models

work = Path(sys.argv[1])
assert torch.cuda.is_available(), "torch sees no CUDA device"
device = torch.device("cuda")
figures = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

def sampled(fn):
    """Run fn while nvidia-smi samples utilisation every 200 ms; (seconds, mean %, samples)."""
    log = work / "util.csv"
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                            "-lms", "200", "-i", "0"], stdout=open(log, "w"))
    torch.cuda.synchronize(); start = time.perf_counter()
    fn(); torch.cuda.synchronize(); seconds = time.perf_counter() - start
    smi.terminate(); smi.wait()
    values = [float(v) for v in log.read_text().split() if v.strip()]
    return seconds, (sum(values) / len(values) if values else float("nan")), len(values)

for size, images, batch in ((32, 20000, 256), (128, 6000, 128)):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    net = models.build("images", classes=10, channels=3, size=size).to(device).to(memory_format=torch.channels_last)
    opt = loop.make_optimizer(net, 1e-3, 1e-4)
    slot = [loop.SlotModel(net, opt, loop.cosine_with_warmup(opt, 5, 10 * math.ceil(images / batch)),
                           loop.EarlyStopping(), torch.amp.GradScaler("cuda"))]
    every = torch.ones(1, images, dtype=torch.bool)
    tf = augment.augmenter(size, 3, True)
    epoch = lambda: loop.train_epoch(slot, x.pin_memory(), y, every, torch.arange(images), batch, device, transform=tf)
    epoch()  # warm-up: cuDNN autotuning, the allocator
    seconds, util, n = sampled(epoch)
    figures[f"resnet18_{size}px"] = {"images": images, "batch": batch, "seconds": round(seconds, 2),
                                      "images_per_s": round(images / seconds, 1), "gpu_util_mean_pct": round(util, 1),
                                      "util_samples": n, "amp": True}

rows, width = 200_000, 20
x = torch.randn(rows, width); y = torch.randint(0, 3, (rows,))
masks = torch.stack([torch.arange(rows) % 5 != f for f in range(5)] + [torch.ones(rows, dtype=torch.bool)])
slots = []
for _ in range(6):
    net = models.build("tabular", inputs=width, classes=3).to(device)
    opt = loop.make_optimizer(net, 1e-3, 1e-4)
    slots.append(loop.SlotModel(net, opt, None, loop.EarlyStopping(), torch.amp.GradScaler("cuda")))
run = lambda: loop.train_epoch(slots, x, y, masks, torch.randperm(rows), 4096, device)
run()
seconds, util, n = sampled(run)
figures["mlp_6_slots"] = {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                          "gpu_util_mean_pct": round(util, 1)}
(work / "figures.json").write_text(json.dumps(figures))
EOF

# 3. one CV of the digits sample on the GPU
.venv/bin/fulcrum --events none samples "$WORK/s" >/dev/null
.venv/bin/fulcrum --events none run "$WORK/s/digits/digits.yaml" --until oversample --set lake_root="$WORK/lake" >/dev/null
start=$(date +%s.%N)
"$PY" -m training --table "$WORK/lake/digits/gold" --out "$WORK/cv" --use-gpu true --epochs 10 --tensorboard false
end=$(date +%s.%N)
"$PY" - "$WORK" "$start" "$end" "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
work, start, end, out = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
figures = json.loads((work / "figures.json").read_text())
cv = json.loads((work / "cv" / "cv.json").read_text())
figures["digits_cv_gpu"] = {"seconds": round(end - start, 1), "use_gpu": cv["use_gpu"], "folds": cv["folds"],
                            "mean_accuracy": round(cv["mean"]["accuracy"], 3), "test_accuracy": round(cv["final"]["test_accuracy"], 3)}
(out / "gpu_check.json").write_text(json.dumps(figures, indent=2))
print(json.dumps(figures, indent=2))
EOF
