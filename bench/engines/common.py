"""Shared by bench/engines/run_*.py: side venvs, the model, the chats, the references, one client.

Each runner installs its engine in its own venv under the cache dir (BLOOMCHAT_ENGINES_CACHE,
default ~/.cache/bloomchat/engines), runs the engine there in a subprocess (a worker script that
prints JSON), and compares, in this process (the project's venv, transformers 5):

- the prompt ids the engine renders itself from the chat template  == transformers 5's
- greedy ids for N new tokens                                        == transformers 5's
- the reply text of bloomchat's own engine (temperature 0)           == transformers 5's, decoded
- each server's OpenAI chat API, driven by `openai_reply` below (the same code for every
  server, bloomchat serve included)                                   == that same text
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BLOOMCHAT_ENGINES_CACHE", Path.home() / ".cache" / "bloomchat" / "engines"))
RESULTS = REPO / "bench" / "results" / f"engines-{date.today().isoformat()}"
N_NEW = 16  # greedy tokens compared per chat
STOP = ["<human>:"]  # bloomchat's engine never writes the next human turn; servers are told the same

CHATS = {
    "single": [{"role": "user", "content": "你好，请介绍一下北京。"}],
    "multi": [{"role": "user", "content": "What is the capital of France?"},
              {"role": "assistant", "content": "The capital of France is Paris."},
              {"role": "user", "content": "Et quelle est sa population ?"}],
    "multi3": [{"role": "user", "content": "Hola"},
               {"role": "assistant", "content": "¡Hola! ¿En qué puedo ayudarte?"},
               {"role": "user", "content": "Dime un poema corto."},
               {"role": "assistant", "content": "El mar canta, la luna escucha."},
               {"role": "user", "content": "Gracias. 谢谢!"}],
}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def ensure_venv(name: str, requirements: list[str], *, check: str, extra_env: dict | None = None) -> Path:
    """python of venv CACHE/name, created with `pip install requirements` when `check` fails there."""
    venv = CACHE / name
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0:
        return py
    log(f"[{name}] creating {venv} (pip install {' '.join(requirements)}) ...")
    t0 = time.time()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *requirements], check=True, env=env)
    log(f"[{name}] installed in {time.time() - t0:.0f} s")
    return py


def side_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_worker(py: Path, script: str, request: dict, timeout: int = 1800) -> dict:
    """Run bench/engines/<script> with the side venv's python; request on stdin, JSON on the last line."""
    env = side_env()
    env["PATH"] = f"{py.parent}{os.pathsep}{env.get('PATH', '')}"  # the side venv first (subprocesses too)
    proc = subprocess.run([str(py), str(Path(__file__).with_name(script))], input=json.dumps(request),
                          capture_output=True, text=True, env=env, timeout=timeout)
    log_path = RESULTS / "logs" / f"{script}-{int(time.time())}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed ({proc.returncode}), see {log_path}:\n{proc.stderr[-2000:]}")
    for line in reversed(proc.stdout.splitlines()):  # engines log to stdout too, even after the result
        if line.startswith('{"'):
            return json.loads(line)
    raise RuntimeError(f"{script} printed no result, see {log_path}")


def pip_version(py: Path, dist: str) -> str:
    out = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True, env=side_env())
    return out.stdout.strip() or "?"


def default_model() -> Path:
    """The model to check: $BLOOMCHAT_ENGINES_MODEL, or a demo BLOOM built once under CACHE."""
    if os.environ.get("BLOOMCHAT_ENGINES_MODEL"):
        return Path(os.environ["BLOOMCHAT_ENGINES_MODEL"])
    work = CACHE / "demo"
    model = work / "model"
    if not (model / "config.json").exists():
        log(f"building the demo model in {work} (bloomchat demo, several minutes) ...")
        subprocess.run([sys.executable, "-m", "bloomchat", "demo", "--workdir", str(work)], check=True)
    return model


def references(model_dir: Path) -> dict:
    """transformers 5 (this venv): prompt ids from the chat template, N greedy ids, reply text;
    and bloomchat's engine: its prompt ids and its temperature-0 reply."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bloomchat.infer import load_chat_model
    from bloomchat.infer.params import GenerationParams

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cm = load_chat_model(str(model_dir), dtype="float32")
    out = {}
    for name, chat in CHATS.items():
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)[0, len(ids):].tolist()
        ev = cm.generate_ids([cm.prompt_ids(chat)], GenerationParams(temperature=0.0, top_p=1.0,
                                                                      repetition_penalty=1.0, max_new_tokens=N_NEW))[0]
        out[name] = {"prompt_text": tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                     "prompt_ids": ids, "greedy": gen, "reply_text": reply_text(tok, gen),
                     "bloomchat_prompt_ids": cm.prompt_ids(chat), "bloomchat_text": ev.final_text}
    return out


def reply_text(tok, greedy: list[int]) -> str:
    """What a server should answer for these greedy ids: up to EOS, cut before a stop string."""
    eos = tok.eos_token_id
    ids = greedy[:greedy.index(eos)] if eos in greedy else greedy
    text = tok.decode(ids, skip_special_tokens=True)
    for s in STOP:
        if s in text:
            text = text[:text.index(s)]
    return text


def openai_reply(base_url: str, model: str, messages: list[dict], extra: dict | None = None) -> str:
    """The one client used against every server: OpenAI chat completions, greedy, N tokens."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="sk-none", timeout=600)
    r = client.chat.completions.create(model=model, messages=messages, temperature=0.0, top_p=1.0,
                                       max_tokens=N_NEW, stop=STOP,
                                       # greedy means no penalty: bloomchat serve defaults to BLOOMChat's 1.2
                                       extra_body={"repetition_penalty": 1.0, **(extra or {})})
    return r.choices[0].message.content or ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess; waits until GET `health` answers 200 (or the process dies)."""

    def __init__(self, cmd: list[str], port: int, *, env: dict | None = None, health: str = "/health",
                 timeout: float = 1200, log_path: Path | None = None):
        import urllib.request

        self.log_path = log_path or Path(os.devnull)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env or side_env())
        self.base = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base + health, timeout=5) as r:
                    if r.status == 200:
                        self.startup_s = time.time() - t0
                        return
            except OSError:
                time.sleep(2)
        self.stop()
        raise RuntimeError(f"server not up after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def bloomchat_serve(model_dir: Path, log_path: Path) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return Server([sys.executable, "-m", "bloomchat", "serve", str(model_dir), "--port", str(port), "--dtype",
                   "float32", "--no-guards", "--served-model-name", "m"], port, env=env, log_path=log_path)


def compare(engine: str, refs: dict, got: dict, api: dict) -> dict:
    """Per chat: which identities hold. `got[name]` has prompt_ids/greedy; `api[name]` has text."""
    rows = {}
    for name, ref in refs.items():
        g, a = got.get(name, {}), api.get(name, {})
        rows[name] = {
            "template_ids_eq_tf5": g.get("prompt_ids") == ref["prompt_ids"] if "prompt_ids" in g else None,
            "bloomchat_engine_prompt_eq_template": ref["bloomchat_prompt_ids"] == ref["prompt_ids"],
            "greedy_eq_tf5": g.get("greedy") == ref["greedy"] if "greedy" in g else None,
            # texts compared without leading whitespace: bloomchat's engine and server drop the space
            # that starts every BLOOMChat reply (" answer" after "<bot>:"), other servers keep it
            "bloomchat_engine_text_eq_tf5": ref["bloomchat_text"].lstrip() == ref["reply_text"].lstrip(),
            "api_text_eq_tf5": {srv: txt.lstrip() == ref["reply_text"].lstrip() for srv, txt in a.items()},
            "tf5_greedy": ref["greedy"], "engine_greedy": g.get("greedy"),
            "tf5_text": ref["reply_text"], "bloomchat_engine_text": ref["bloomchat_text"], "api_text": a,
        }
    return {"engine": engine, "chats": rows}


def save(result: dict, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {p}")
    return p


def summary(result: dict) -> str:
    lines = []
    for name, r in result["chats"].items():
        flags = {k: v for k, v in r.items() if k.endswith(("_eq_tf5", "_eq_template")) and not isinstance(v, dict)}
        flags.update({f"api[{s}]": v for s, v in r["api_text_eq_tf5"].items()})
        lines.append(f"{result['engine']:>16} {name:>7}: " + "  ".join(f"{k}={v}" for k, v in flags.items()))
    return "\n".join(lines)
