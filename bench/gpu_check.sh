#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script (CI has no GPU; a session lent one runs this).
#
#   bash bench/gpu_check.sh                 # results under runs/gpu_check (or $OUT)
#   STEPS="tests serve" bash bench/gpu_check.sh
#
# Steps, each under its own time limit so that one stuck step leaves the others' results:
#   tests  python -m pytest -m gpu: engine on CUDA (exact fp32 tokens vs generate, bf16 default,
#          batching), bitsandbytes int8, bf16 training vs fp32, packed attention in bf16,
#          DeepSpeed ZeRO-3 through `accelerate launch` (skipped where deepspeed is missing)
#   serve  bench/bench_serve.py --device cuda: tokens/s and TTFT at 1/4/8/16 streaming clients vs
#          one-generate-per-request, and bitsandbytes int8 vs bf16 (speed, KL, memory)
#   attention  bench/bench_attention.py: packed-attention kernels (eager, SDPA and each SDPA backend)
#   demo   `bloomchat demo` end to end on the GPU
#   train  bench/bench_train.py --bf16: training tokens/s, ours (sdpa, eager) vs HF Trainer (padded);
#          the 2026-11-27 run saw sdpa 5x slower than eager here, before rows were padded to a
#          multiple of 64 on GPU: check that this is gone (bench/results/gpu-h200-2026-11-27)
# Needs: torch with CUDA, and bloomchat's dependencies (plus bitsandbytes, deepspeed) importable.
set -u
OUT=${OUT:-runs/gpu_check}
STEPS=${STEPS:-tests serve attention demo train}
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
    tests/infer/test_infer_gpu.py tests/train/test_train_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
if has serve; then
  step "serve bench"
  timeout "${T_SERVE:-260}" $PY bench/bench_serve.py --device cuda --threads 4 \
    --presets ${SERVE_PRESETS:-tiny small-50m bloom-560m} --out "$OUT/serve" 2>&1 | tee "$OUT/bench_serve.log"
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
