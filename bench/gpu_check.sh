#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script (CI has no GPU; a session lent one runs this).
#
#   bash bench/gpu_check.sh                 # results under bench/results/gpu-<card>-<date> (or $OUT)
#   STEPS="tests kernels" bash bench/gpu_check.sh
#
# Steps, each under its own time limit so that one stuck step leaves the others' results:
#   tests  python -m pytest -m gpu: engine on CUDA (exact fp32 tokens vs generate, bf16 default,
#          batching), bitsandbytes int8, bf16 training vs fp32, packed attention in bf16 (sdpa and
#          compiled flex), DeepSpeed ZeRO-3 through `accelerate launch` (skipped where deepspeed is missing)
#   kernels  bench/bench_train.py --kernels eager,sdpa,flex --bf16 at 512 and 2048 tokens a row on the
#          tiny, small-50m and bloom-560m shapes: tokens/s, MFU against the card's dense bf16 peak,
#          peak memory of one step (issue 18 targets, H200, bloom-560m, 2048: best kernel >= 40% MFU
#          and >= 2x eager)
#   serve  bench/bench_serve.py --device cuda: tokens/s and TTFT at 1/8/16 streaming clients vs
#          one-generate-per-request, and bitsandbytes int8 vs bf16 (speed, KL, memory)
#   attention  bench/bench_attention.py: packed-attention kernels (eager, SDPA and each SDPA backend, flex)
#   demo   `bloomchat demo` end to end on the GPU
#   train  bench/bench_train.py --bf16: training tokens/s, ours (sdpa, eager) vs HF Trainer (padded);
#          the 2026-11-27 run saw sdpa 5x slower than eager here, before rows were padded to a
#          multiple of 64 on GPU: check that this is gone (bench/results/gpu-h200-2026-11-27)
# Needs: torch with CUDA, and bloomchat's dependencies (plus bitsandbytes, deepspeed) importable.
set -u
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z' 'a-z' | sed 's/nvidia//; s/[^a-z0-9]\+/-/g; s/^-//; s/-$//')
OUT=${OUT:-bench/results/gpu-${CARD:-unknown}-$(date +%F)}
STEPS=${STEPS:-tests kernels serve attention demo train}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
step() { echo; echo "== $1 ($(date +%T))"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

step env
nvidia-smi -L
$PY - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for m in ("transformers", "accelerate", "bitsandbytes", "deepspeed", "fastapi", "peft", "datasets", "pyarrow", "pydantic"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "MISSING", type(e).__name__, e)
EOF

if has tests; then
  step "gpu tests"
  timeout "${T_TESTS:-200}" $PY -m pytest -m gpu -p no:cacheprovider -q -rs \
    tests/infer/test_infer_gpu.py tests/train/test_train_gpu.py tests/train/test_train_flex_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
if has kernels; then
  for SEQ in 512 2048; do
    step "attention kernels in training, $SEQ tokens a row"
    timeout "${T_KERNELS:-300}" $PY bench/bench_train.py --kernels eager,sdpa,flex --bf16 --models tiny,small-50m,bloom-560m \
      --seq $SEQ --rows 4 --steps 4 --mem-lengths $SEQ --worker-timeout 120 --json "$OUT/train-kernels-$SEQ.json" \
      2>&1 | grep -v "^Writing\|^ \|^[{}\"]" | tee "$OUT/train-kernels-$SEQ.txt"
  done
fi
if has serve; then
  step "serve bench"
  timeout "${T_SERVE:-260}" $PY bench/bench_serve.py --device cuda --threads 4 \
    --presets ${SERVE_PRESETS:-tiny small-50m bloom-560m} --clients 1 8 16 --out "$OUT/serve" 2>&1 | tee "$OUT/bench_serve.log"
fi
if has attention; then
  step "attention kernels"
  timeout "${T_ATTENTION:-90}" $PY bench/bench_attention.py --device cuda --bf16 --presets small-50m bloom-560m \
    --lengths 512 2048 2>&1 | grep -v "ctx = torch" | tee "$OUT/attention.log"
fi
if has demo; then
  step "demo"
  timeout "${T_DEMO:-80}" $PY -m bloomchat demo --workdir /tmp/gpu_demo 2>&1 | tail -25 | tee "$OUT/demo.log"
fi
if has train; then
  step "train bench"
  timeout "${T_TRAIN:-80}" $PY bench/bench_train.py --bf16 --models small-50m --steps 6 \
    --systems bloomchat,bloomchat-eager,hf-trainer-padded 2>&1 | tail -20 | tee "$OUT/bench_train.log"
fi
step done
