"""llama.cpp (llama-cpp-python) on a GGUF written by `bloomchat export gguf`, offline and through
llama-cpp-python's OpenAI server.

    python bench/engines/run_llamacpp.py [MODEL_DIR]    # venv: $BLOOMCHAT_ENGINES_CACHE/llamacpp
                                                        # (builds llama.cpp from source: ~15+ min on 2 cores)
"""
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LLAMA_CPP = "llama-cpp-python[server]==0.3.36"


def main() -> int:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else common.default_model()
    tag = model.name if model.name != "model" else model.parent.name
    py = common.ensure_venv("llamacpp", [LLAMA_CPP], check="import llama_cpp, llama_cpp.server",
                            extra_env={"CMAKE_BUILD_PARALLEL_LEVEL": "2"})
    refs = common.references(model)
    out = {}
    api = {name: {} for name in common.CHATS}
    for outtype in ("f32", "f16"):
        gguf = common.CACHE / "gguf" / tag / f"{tag}-{outtype}.gguf"
        subprocess.run([sys.executable, "-m", "bloomchat", "export", "gguf", str(model), "-o", str(gguf),
                        "--outtype", outtype], check=True, env={**common.side_env(), "PYTHONPATH": str(common.REPO / "src")})
        got = common.run_worker(py, "worker_llamacpp.py", {"gguf": str(gguf), "chats": common.CHATS, "n": common.N_NEW,
                                                           "ref_ids": {k: v["prompt_ids"] for k, v in refs.items()}})
        res = common.compare(f"llama.cpp-{outtype}", refs, got["chats"], {})
        for name, r in res["chats"].items():
            r["greedy_from_tf5_prompt_ids_eq_tf5"] = got["chats"][name]["greedy_from_ref_ids"] == refs[name]["greedy"]
            r["rendered_text_eq_tf5"] = got["chats"][name]["prompt_text"] == refs[name]["prompt_text"]
        out[outtype] = res
        if outtype == "f32":
            port = common.free_port()
            srv = common.Server([str(py), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
                                 "--n_ctx", "2048", "--n_threads", "2", "--port", str(port)], port, health="/v1/models",
                                log_path=common.RESULTS / f"logs/llamacpp-server-{tag}.log")
            try:
                for name, chat in common.CHATS.items():
                    # llama-cpp-python applies repeat_penalty 1.1 unless told otherwise
                    api[name]["llama-cpp-server"] = common.openai_reply(srv.base + "/v1", "m", chat,
                                                                        extra={"repeat_penalty": 1.0})
            finally:
                srv.stop()
            for name, r in res["chats"].items():
                r["api_text"] = api[name]
                r["api_text_eq_tf5"] = {s: t.lstrip() == refs[name]["reply_text"].lstrip() for s, t in api[name].items()}
        versions = {"llama-cpp-python": got["version"], "gguf_pre": got["pre"], "gguf_context_length": got["context"]}
    result = {"engine": "llama.cpp", "model": str(model), "versions": versions, "by_outtype": out}
    common.save(result, f"llamacpp-{tag}")
    for res in out.values():
        print(common.summary(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
