#!/usr/bin/env bash
# The training engine on a CUDA GPU, in one short run (about 3 minutes on an H200), each figure beside its peer:
#   1. ResNet-18 at 32 and 128 px with AMP through training.loop (images/s, GPU utilisation sampled every 200 ms;
#      target ≥ 90 % at 128 px) beside a plain PyTorch loop; the tabular MLP's six slots in one pass beside six
#      plain passes (tests/bench/gpu_check.py engine);
#   2. one cross-validation of each bundled sample on the GPU (cancer: tabular MLP; digits: images), every fold
#      and the final model in one pass per epoch (tests/bench/gpu_check.py cv).
# The gold tables come from the Spark stages (`fulcrum run --until oversample`) unless GOLD_DIR names a folder that
# already holds them (GOLD_DIR/cancer/gold, GOLD_DIR/digits/gold): a GPU node without Java or Spark. Where Ray is
# not installed either, the CV runs the same worker code in-process (see gpu_check.py).
# Writes JSON under ${OUT:-bench-results}.
#   bash tests/bench/gpu_check.sh            # from the repository root, after `make setup`
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT:-bench-results}
mkdir -p "$OUT_DIR"
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this check needs a CUDA GPU"; exit 2; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

"$PY" tests/bench/gpu_check.py engine --device cuda --out "$OUT_DIR"

LAKE=${GOLD_DIR:-}
if [ -z "$LAKE" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  .venv/bin/fulcrum --events none samples "$WORK/s" >/dev/null
  for name in cancer digits; do
    .venv/bin/fulcrum --events none run "$WORK/s/$name/$name.yaml" --until oversample --set lake_root="$WORK/lake" >/dev/null
  done
  LAKE=$WORK/lake
fi
for name in cancer digits; do
  "$PY" tests/bench/gpu_check.py cv --table "$LAKE/$name/gold" --device cuda --epochs 10 --out "$OUT_DIR"
done
