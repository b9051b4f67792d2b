"""The whole pipeline on a laptop: bundled data -> tokenizer + tiny BLOOM -> two stages -> chat.

    bloomchat demo                         # ./bloomchat-demo, reuses what is already built
    bloomchat demo --workdir /tmp/d --fresh

Nothing here is a demo-only path: data goes through `bloomchat.data.prepare`, training through
`bloomchat.train.run_recipe` on `recipes/demo.yaml` (which prepares and packs each stage), and
the chat through `bloomchat.infer.load_chat_model`, exactly as a real run on BLOOM would.
Each step records a key of its inputs in WORKDIR/demo-state.json; a later run skips a step whose
key is unchanged, and an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from bloomchat.errors import BloomchatError

#: Demo conversations, shown after training: (language, user turns).
DEMO_CHATS: list[tuple[str, list[str]]] = [
    ("中文", ["你好！你是谁？", "推荐一道简单的家常菜。"]),
    ("English", ["Hello! Who are you?", "Give me one tip for learning a new language."]),
]
DEMO_MAX_NEW_TOKENS = 48  # short replies keep the demo quick; the published default is 512


def shipped_recipe(name: str) -> Path:
    """Path of a recipe shipped with bloomchat (recipes/NAME.yaml, inside the package as bloomchat/recipes)."""
    path = Path(str(resources.files("bloomchat") / "recipes" / f"{name}.yaml"))
    if not path.exists():
        raise BloomchatError(f"shipped recipe not found: {path}")
    return path


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _dir_key(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return _sha(*[f"{p.relative_to(root)}" for p in files], *[p.read_bytes() for p in files])


class _State:
    """demo-state.json: which step was done with which input key."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def done(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key and self.data[step].get("done", False)

    def started(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key

    def mark(self, step: str, key: str, done: bool, **extra: Any) -> None:
        self.data[step] = {"key": key, "done": done, **extra}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def write_demo_data(data_dir: Path) -> list[Path]:
    """Copy the bundled demo conversations (our own, see demo/data/SOURCE.md) into `data_dir`."""
    src = resources.files("bloomchat.demo") / "data"
    written = []
    for layout in ("oig", "dolly", "oasst1"):
        for entry in sorted(src.joinpath(layout).iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".jsonl"):
                continue
            dest = data_dir / layout / entry.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            content = entry.read_bytes()
            if not dest.exists() or dest.read_bytes() != content:
                dest.write_bytes(content)
            written.append(dest)
    if not written:
        raise BloomchatError(f"bundled demo data missing from the installed package ({src})")
    return written


def _corpus_texts(data_dir: Path, scratch: Path) -> list[str]:
    """All demo conversations as BLOOMChat text, read by the real readers (bloomchat.data.prepare)."""
    from bloomchat.data import prepare
    from bloomchat.conversation import Conversation

    out = scratch / "tokenizer-corpus.jsonl"
    prepare(
        out=out,
        oig=sorted((data_dir / "oig").glob("unified_*.jsonl")),
        dolly=sorted((data_dir / "dolly").glob("*.jsonl")),
        oasst1=sorted((data_dir / "oasst1").glob("*.jsonl")),
        basic_repeat=0,  # the tokenizer sees each text once; oversampling is for training
    )
    texts = []
    with out.open(encoding="utf-8") as f:
        for line in f:
            texts.append(Conversation.from_record(json.loads(line)).text)
    return texts


def run_demo(workdir: str | Path = "bloomchat-demo", *, fresh: bool = False, preset: str = "tiny",
             vocab_size: int = 8000, console: Console | None = None,
             chat_fn: Callable[[Path, Console], None] | None = None) -> dict[str, Any]:
    """Run the demo pipeline in `workdir`; returns paths and timings. See the module docstring."""
    from bloomchat.models import build_local_base
    from bloomchat.train import run_recipe

    console = console or Console()
    wd = Path(workdir).expanduser().resolve()
    if fresh and wd.exists():
        console.print(f"[bold]--fresh:[/] removing {wd}")
        shutil.rmtree(wd)
    wd.mkdir(parents=True, exist_ok=True)
    state = _State(wd / "demo-state.json")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(title: str):
        console.rule(f"[bold cyan]{title}")
        return time.perf_counter()

    # 1. Data: our bundled conversations in the three real source layouts.
    t = step("1/4  demo data (OIG, Dolly-15k and OASST1 layouts, 8+ languages)")
    files = write_demo_data(wd / "data")
    data_key = _dir_key(wd / "data")
    for f in files:
        n = sum(1 for _ in f.open(encoding="utf-8"))
        console.print(f"  {f.relative_to(wd)}  [dim]{n} lines[/]")
    timings["data"] = time.perf_counter() - t

    # 2. Base model: tokenizer trained on the data + randomly initialised BLOOM.
    t = step(f"2/4  base model: byte-level BPE tokenizer + BLOOM preset '{preset}'")
    base = wd / "base"
    base_key = _sha(data_key, preset, str(vocab_size))
    if state.done("base", base_key) and (base / "config.json").exists():
        console.print(f"  reusing {base}", soft_wrap=True, highlight=False)
    else:
        with console.status("training tokenizer and building model"):
            texts = _corpus_texts(wd / "data", wd)
            build_local_base(texts, base, preset=preset, vocab_size=vocab_size)
        state.mark("base", base_key, True)
        console.print(f"  saved {base}")
    timings["base"] = time.perf_counter() - t

    # 3. Training: the two BLOOMChat stages of recipes/demo.yaml.
    t = step("3/4  training: stage 1 (OIG) then stage 2 (Dolly + OASST1, 3 epochs)")
    recipe = shipped_recipe("demo")
    train_key = _sha(base_key, recipe.read_bytes())
    model_dir = wd / "model"
    if state.done("train", train_key) and (model_dir / "config.json").exists():
        console.print(f"  reusing {model_dir}", soft_wrap=True, highlight=False)
        result = state.data["train"].get("result", {})
    else:
        resume = state.started("train", train_key)
        if not resume and (wd / "runs").exists():
            shutil.rmtree(wd / "runs")
        state.mark("train", train_key, False)
        result = run_recipe(recipe, vars={"workdir": str(wd)}, resume=resume)
        final = Path(result["final_model_dir"])
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(final, model_dir)
        state.mark("train", train_key, True, result=_jsonable(result))
    timings["train"] = time.perf_counter() - t

    # 4. Chat with the model just trained.
    t = step("4/4  chat with the trained model")
    (chat_fn or show_demo_chats)(model_dir, console)
    timings["chat"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t_all
    console.rule("[bold green]done")
    console.print(f"Chat model (Hugging Face layout): [bold]{model_dir}[/]  ({timings['total']:.0f} s in all)", soft_wrap=True)
    console.print("Next:")
    console.print(f"  bloomchat chat {model_dir}", soft_wrap=True, highlight=False)
    console.print(f"  bloomchat serve {model_dir} --port 8000    # OpenAI-compatible API and web chat at http://127.0.0.1:8000/",
                  soft_wrap=True, highlight=False)
    return {"workdir": str(wd), "model_dir": str(model_dir), "train": result, "timings": timings}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def show_demo_chats(model_dir: Path, console: Console) -> list[tuple[str, list[dict[str, str]]]]:
    """Two short multi-turn chats (Chinese, English) with the published sampling settings."""
    from bloomchat.infer import GenerationParams, load_chat_model

    cm = load_chat_model(model_dir)
    params = GenerationParams(max_new_tokens=DEMO_MAX_NEW_TOKENS, seed=0)
    transcripts = []
    for lang, user_turns in DEMO_CHATS:
        console.print(f"[bold]{lang}[/]")
        messages: list[dict[str, str]] = []
        for text in user_turns:
            messages.append({"role": "user", "content": text})
            reply = cm.reply(messages, params)
            messages.append({"role": "assistant", "content": reply})
            console.print(f"  [green]<human>:[/] {text}", soft_wrap=True)
            console.print(f"  [magenta]<bot>:[/] {reply}", highlight=False, soft_wrap=True)
        transcripts.append((lang, messages))
    return transcripts
