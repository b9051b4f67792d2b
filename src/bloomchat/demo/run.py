"""The whole pipeline on a laptop: bundled data -> tokenizer + tiny BLOOM -> two stages -> DPO -> chat.

    bloomchat demo                         # ./bloomchat-demo, reuses what is already built
    bloomchat demo --workdir /tmp/d --fresh

Nothing here is a demo-only path: data goes through `bloomchat.data.prepare`, training through
`bloomchat.train.run_recipe` on `recipes/demo.yaml` (which prepares and packs each stage), and
the chat through `bloomchat.infer.load_chat_model`, exactly as a real run on BLOOM would.
A later run skips each step whose inputs did not change (bloomchat.demo.workdir).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from bloomchat.demo.workdir import DemoWorkdir, dir_key, sha, shipped_recipe, write_demo_data

#: Demo conversations, shown after training: (language, user turns).
DEMO_CHATS: list[tuple[str, list[str]]] = [
    ("中文", ["你好！你是谁？", "推荐一道简单的家常菜。"]),
    ("English", ["Hello! Who are you?", "Give me one tip for learning a new language."]),
]
DEMO_MAX_NEW_TOKENS = 48  # short replies keep the demo quick; the published default is 512


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

    wd = DemoWorkdir(workdir, fresh=fresh, console=console)
    # 1. Data: our bundled conversations in the three real source layouts.
    wd.step("data", "1/4  demo data (OIG, Dolly-15k and OASST1 layouts, 8+ languages)")
    files = write_demo_data(wd.path / "data")
    data_key = dir_key(wd.path / "data")
    for f in files:
        n = sum(1 for _ in f.open(encoding="utf-8"))
        wd.console.print(f"  {f.relative_to(wd.path)}  [dim]{n} lines[/]")

    # 2. Base model: tokenizer trained on the data + randomly initialised BLOOM.
    wd.step("base", f"2/4  base model: byte-level BPE tokenizer + BLOOM preset '{preset}'")
    base = wd.path / "base"
    base_key = sha(data_key, preset, str(vocab_size))
    if wd.state.done("base", base_key) and (base / "config.json").exists():
        wd.say(f"  reusing {base}")
    else:
        with wd.console.status("training tokenizer and building model"):
            texts = _corpus_texts(wd.path / "data", wd.path)
            build_local_base(texts, base, preset=preset, vocab_size=vocab_size)
        wd.state.mark("base", base_key, True)
        wd.console.print(f"  saved {base}")

    # 3. Training: the two BLOOMChat stages of recipes/demo.yaml.
    wd.step("train", "3/5  training: stage 1 (OIG) then stage 2 (Dolly + OASST1, 3 epochs)")
    recipe = shipped_recipe("demo")
    train_key = sha(base_key, recipe.read_bytes())
    model_dir, result = wd.train_once(recipe, train_key, runs="runs/demo")
    sft_model = Path(result["final_model_dir"])

    # 4. A preference stage on top: DPO on hand-written pairs in 8 languages (recipes/demo-dpo.yaml).
    wd.step("dpo", "4/5  preference: DPO on 48 written pairs (wrong, repetitive or off-language replies rejected)")
    dpo = shipped_recipe("demo-dpo")
    model_dir, dpo_result = wd.train_once(dpo, sha(train_key, dpo.read_bytes()), step="dpo", runs="runs/demo-dpo",
                                          vars={"model": str(sft_model)})
    _show_dpo(dpo_result, wd)

    # 5. Chat with the model just trained.
    wd.step("chat", "5/5  chat with the trained model")
    (chat_fn or show_demo_chats)(model_dir, wd.console)
    timings = wd.finish()
    wd.console.rule("[bold green]done")
    wd.console.print(f"Chat model (Hugging Face layout): [bold]{model_dir}[/]  ({timings['total']:.0f} s in all)",
                     soft_wrap=True)
    wd.show_next(model_dir)
    return {"workdir": str(wd.path), "model_dir": str(model_dir), "train": result, "dpo": dpo_result,
            "timings": timings}


def _show_dpo(result: dict, wd: DemoWorkdir) -> None:
    """Reward accuracy of the preference stage on its held-out pairs (the stage's result)."""
    dev = (result.get("stages") or [{}])[-1].get("dev_metrics")
    if dev:
        wd.say(f"  held-out pairs: reward accuracy {dev['reward_accuracy']:.2f} over {dev['pairs']} pairs "
               f"(0.5 = no preference learned; a tiny model on 36 training pairs)")


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
