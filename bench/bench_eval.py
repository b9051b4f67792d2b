"""Examples/s of multiple-choice scoring and of translation, batched vs one at a time.

    python bench/bench_eval.py                                  # tiny and small-50m on CPU
    python bench/bench_eval.py --sizes small-50m --device cuda --n-mc 256 --n-tr 64 --batch-size 32

Models are randomly initialised BLOOMs of the named presets with a byte-level BPE trained on
the FLORES sentences (8k vocabulary), so nothing is downloaded. A random model never emits
EOS, so every translation runs to --max-new-tokens: batched and single runs generate the same
number of tokens, which is what makes their examples/s comparable. Data: the first FLORES
en->zh sentences and XWinograd items from ../shared/data (synthetic text when absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _texts() -> list[str]:
    f = SHARED / "flores101"
    if f.exists():
        return [ln for lang in ("en", "zh", "de", "ro") for ln in (f / f"devtest.{lang}.txt").read_text("utf-8").splitlines()]
    return [f"Sentence number {i} about the weather, 天气很好, il fait beau." for i in range(2000)]


def _mc_file(tmp: Path, n: int) -> Path:
    from bloomchat.eval.mc import load_mc, write_mc_jsonl

    xw = SHARED / "xwinograd" / "xwinograd.tsv"
    if xw.exists():
        items = load_mc(xw)[:n]
    else:
        items = [{"id": str(i), "context": f"Question {i}: the answer is", "choices": [" yes", " no", " maybe"],
                  "label": i % 3, "lang": "en"} for i in range(n)]
    return write_mc_jsonl(items, tmp / "mc.jsonl")


def _tr_file(tmp: Path, n: int) -> Path:
    f = SHARED / "flores101"
    if f.exists():
        en = (f / "devtest.en.txt").read_text("utf-8").splitlines()[:n]
        zh = (f / "devtest.zh.txt").read_text("utf-8").splitlines()[:n]
    else:
        en = [f"Sentence number {i} about the weather." for i in range(n)]
        zh = [f"第{i}句关于天气的话。" for i in range(n)]
    out = tmp / "pairs.jsonl"
    out.write_text("".join(json.dumps({"src": a, "ref": b, "src_lang": "en", "tgt_lang": "zh"}, ensure_ascii=False) + "\n"
                           for a, b in zip(en, zh)), encoding="utf-8")
    return out


def _rate(task, backend, batch_size: int) -> float:
    exs = sorted(task.examples(), key=task.sort_key)
    t0 = time.perf_counter()
    for i in range(0, len(exs), batch_size):
        task.run_batch(backend, exs[i: i + batch_size])
    return len(exs) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,small-50m")
    ap.add_argument("--n-mc", type=int, default=64, help="multiple-choice examples (XWinograd: 2 options each)")
    ap.add_argument("--n-tr", type=int, default=16, help="sentences to translate")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from bloomchat.eval.backends import GenParams, HFBackend
    from bloomchat.eval.mc import MCTask
    from bloomchat.eval.translation import TranslationTask
    from bloomchat.models import build_bloom, train_bpe_tokenizer

    torch.manual_seed(0)
    tok = train_bpe_tokenizer(_texts(), vocab_size=8000)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mc = MCTask(str(_mc_file(tmp, args.n_mc)))
        tr = TranslationTask(str(_tr_file(tmp, args.n_tr)), params=GenParams(max_new_tokens=args.max_new_tokens))
        for size in args.sizes.split(","):
            model = build_bloom(size, vocab_size=len(tok)).to(args.device)
            n_params = sum(p.numel() for p in model.parameters()) / 1e6
            backend = HFBackend.from_loaded(model, tok, name_or_path=size)
            _rate(mc, backend, args.batch_size)  # warm-up (allocations, kernels)
            for what, task in (("mc", mc), ("translation", tr)):
                for bs in (1, args.batch_size):
                    r = _rate(task, backend, bs)
                    rows.append({"model": size, "params_M": round(n_params, 1), "task": what, "batch_size": bs,
                                 "examples_per_s": round(r, 2), "device": args.device})
                    print(f"{size:10s} {n_params:6.1f}M  {what:11s} batch {bs:3d}: {r:8.2f} examples/s", flush=True)
    print()
    print(f"{'model':10s} {'task':11s} {'batched/single':>15s}")
    for size in args.sizes.split(","):
        for what in ("mc", "translation"):
            one = next(r for r in rows if r["model"] == size and r["task"] == what and r["batch_size"] == 1)
            many = next(r for r in rows if r["model"] == size and r["task"] == what and r["batch_size"] == args.batch_size)
            print(f"{size:10s} {what:11s} {many['examples_per_s'] / one['examples_per_s']:14.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
