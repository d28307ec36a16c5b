#!/usr/bin/env bash
# The whole GPU perception set (issue 15) in one prepared run, under 5 minutes on one H100 / H200:
# SAM ViT-H random weights + planted decoder outputs, 768 x 1024 image, 32 x 32 grid; encoder fp32 and
# bf16; our stage (AMG-exact default, low-res option, object- and part-level refinement) vs
# SamAutomaticMaskGenerator; decoder, RLE and post-processing alone; mask agreement.
# Writes benchmarks/results/proposals_gpu.json (device, end_to_end_s {ours, amg}, end_to_end_refined_s,
# mask_agreement, ...) and copies it to $OUT when that is set (the device machine's output folder).
#
#   bash benchmarks/gpu_perception.sh                       # on the GPU machine, repo root
#   PYTHON=.venv/bin/python bash benchmarks/gpu_perception.sh --device cpu --quick   # CPU smoke test
#
# A CPU run never writes proposals_gpu.json (it writes $OUT or /tmp/proposals_gpu_cpu_smoke.json).
# The GPU machine has no network and lacks segment-anything and pycocotools: bring py3.12 wheels in an
# ignored .whl/ folder (carry it), e.g. here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl segment-anything==1.0 pycocotools==2.0.11
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
device=cuda
quick=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if ! "$PY" -c "import segment_anything, pycocotools" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/dtwinseg_site .whl/*.whl
    export PYTHONPATH=/tmp/dtwinseg_site:${PYTHONPATH:-}
  else
    echo "segment-anything / pycocotools missing and no .whl/ folder to install them from" >&2; exit 3
  fi
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
if [[ $device == cuda* ]]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 4)" || {
    echo "no CUDA device: refusing to write GPU results" >&2; exit 4; }
  result=benchmarks/results/proposals_gpu.json
else
  result=${OUT:-/tmp}/proposals_gpu_cpu_smoke.json
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
timeout 290 "$PY" benchmarks/proposals.py --device "$device" "${quick[@]}" --out "$result"
if [ -n "${OUT:-}" ] && [ "$result" != "$OUT/proposals_gpu_cpu_smoke.json" ]; then cp "$result" "$OUT/"; fi
echo "wrote $result"
