"""transformers 4.57 (what TGI and many users pin) on a bloomchat-saved model: same prompt ids and
greedy ids as transformers 5 and bloomchat's engine?

    python bench/engines/run_transformers457.py [MODEL_DIR]      # venv: $BLOOMCHAT_ENGINES_CACHE/tf457
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TORCH = "torch==2.13.0"  # the project's CPU pin (constraints.txt)


def main() -> int:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else common.default_model()
    py = common.ensure_venv("tf457", ["-c", str(common.REPO / "constraints.txt"), TORCH, "transformers==4.57.*"],
                            check="import torch, transformers; assert transformers.__version__.startswith('4.57')")
    refs = common.references(model)
    got = common.run_worker(py, "worker_transformers.py", {"model": str(model), "chats": common.CHATS, "n": common.N_NEW})
    res = common.compare("transformers-4.57", refs, got["chats"], {})
    res.update(model=str(model), versions={"transformers": got["version"], "torch": common.pip_version(py, "torch")},
               tokenizer_class=got["tokenizer_class"])
    common.save(res, f"transformers457-{model.name if model.name != 'model' else model.parent.name}")
    print(common.summary(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
