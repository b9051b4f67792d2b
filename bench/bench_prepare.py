"""Throughput and peak memory of `bloomchat.data.prepare` on real data, and at 10x the size.

    python bench/bench_prepare.py                 # Dolly-15k, OASST1 en, both x10 (~2-3 min on 2 cores)
    python bench/bench_prepare.py --scale 3       # a smaller "large" input
    python bench/bench_prepare.py --langid        # also: detector accuracy / speed (py3langid vs lingua)

Each measurement runs `prepare` in a fresh Python process and reports its peak resident memory
(ru_maxrss), so the figures do not leak into each other. The x10 inputs are generated into a
temporary folder (each copy's texts made unique, so the duplicate filter keeps them): memory
stays flat when the x10 peak is close to the x1 peak while the time grows ~10x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BLOOMCHAT_SHARED_DATA", REPO.parent / "shared" / "data"))
DOLLY = DATA / "dolly15k" / "databricks-dolly-15k.from-docx.jsonl"
OASST = DATA / "oasst1" / "oasst1_validation_en.messages.jsonl"

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from bloomchat.data import prepare
kw = json.loads(sys.argv[1])
t = time.perf_counter()
s = prepare(progress=False, **kw)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "conversations": s["conversations"],
                  "lines": sum(f["lines_read"] for f in s["files"]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(**kw) -> dict:
    kw = {k: [str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v for k, v in kw.items()}
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kw)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def scale_jsonl(src: Path, dst: Path, k: int, relabel) -> Path:
    """k copies of every line of src, copy c passed through relabel(record, c) so that no two
    copies are duplicates (the prepare filters would drop them)."""
    with src.open(encoding="utf-8") as f, dst.open("w", encoding="utf-8") as g:
        lines = f.readlines()
        for c in range(k):
            for line in lines:
                g.write(json.dumps(relabel(json.loads(line), c), ensure_ascii=False) + "\n")
    return dst


def _relabel_dolly(r: dict, c: int) -> dict:
    r["instruction"] = f"{r['instruction']} [{c}]"
    return r


def _relabel_oasst(r: dict, c: int) -> dict:
    r["message_id"] = f"{r['message_id']}-{c}"
    if r["parent_id"]:
        r["parent_id"] = f"{r['parent_id']}-{c}"
    r["text"] = f"{r['text']} [{c}]"
    return r


def row(name: str, m: dict) -> str:
    return (f"{name:<28} {m['lines']:>9,} {m['conversations']:>9,} {m['seconds']:>8.1f} "
            f"{m['conversations'] / m['seconds']:>10,.0f} {m['peak_rss_mb']:>9.0f}")


def bench_langid() -> None:
    import glob

    from bloomchat.data import langid

    data = []
    for f in sorted(glob.glob(str(DATA / "eval_prompts_llmzoo_multilingual" / "??100.jsonl"))):
        data += [(Path(f).name[:2], json.loads(l)["query"]) for l in open(f, encoding="utf-8")]
    blocks = ["en", "es", "ru", "de", "fr", "uk", "it", "vi", "zh", "ko", "ja", "th"]
    for i, l in enumerate(open(DATA / "eval_prompts_oasst_multilingual60" / "multilingual-60.jsonl", encoding="utf-8")):
        data.append((blocks[i // 5], json.loads(l)))
    short = [d for d in data if len(d[1]) <= 40]
    print(f"\nlanguage ID on {len(data)} labelled prompts ({len(short)} of <= 40 chars)")
    print(f"{'detector':<34} {'acc':>7} {'acc<=40':>8} {'texts/s':>9}")
    for name, cands in (("py3langid, all languages", None), ("py3langid, DEFAULT_CANDIDATES", langid.DEFAULT_CANDIDATES)):
        langid.detect("warm up", cands)
        t = time.perf_counter()
        pred = [langid.detect(x, cands) for _, x in data]
        dt = time.perf_counter() - t
        acc = sum(p == a for p, (a, _) in zip(pred, data)) / len(data)
        acc_s = sum(langid.detect(x, cands) == a for a, x in short) / len(short)
        print(f"{name:<34} {acc:>7.1%} {acc_s:>8.1%} {len(data) / dt:>9,.0f}")
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:
        return
    det = LanguageDetectorBuilder.from_all_languages().build()
    det.detect_language_of("warm up")

    def code(x):
        r = det.detect_language_of(x)
        return r.iso_code_639_1.name.lower() if r else "und"

    t = time.perf_counter()
    pred = [code(x) for _, x in data]
    dt = time.perf_counter() - t
    acc = sum(p == a for p, (a, _) in zip(pred, data)) / len(data)
    acc_s = sum(code(x) == a for a, x in short) / len(short)
    print(f"{'lingua, all languages':<34} {acc:>7.1%} {acc_s:>8.1%} {len(data) / dt:>9,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10, help="size factor of the large inputs (default 10)")
    ap.add_argument("--langid", action="store_true", help="also measure language-ID accuracy and speed")
    args = ap.parse_args()
    for p in (DOLLY, OASST):
        if not p.exists():
            sys.exit(f"real data not found: {p}")
    print(f"{'input':<28} {'lines':>9} {'convs':>9} {'seconds':>8} {'convs/s':>10} {'peak MB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(row("empty run (interpreter+libs)", {**measure(out=tmp / "e.jsonl", jsonl=[_tiny(tmp)])}))
        print(row("dolly-15k", measure(out=tmp / "d.jsonl", dolly=[DOLLY])))
        print(row("oasst1 en (messages)", measure(out=tmp / "o.jsonl", oasst1=[OASST])))
        d10 = scale_jsonl(DOLLY, tmp / f"dolly_x{args.scale}.jsonl", args.scale, _relabel_dolly)
        print(row(f"dolly-15k x{args.scale}", measure(out=tmp / "d10.jsonl", dolly=[d10])))
        o10 = scale_jsonl(OASST, tmp / f"oasst_x{args.scale}.jsonl", args.scale, _relabel_oasst)
        print(row(f"oasst1 en x{args.scale}", measure(out=tmp / "o10.jsonl", oasst1=[o10])))
        print(row(f"dolly x{args.scale}, no langid", measure(out=tmp / "n.jsonl", dolly=[d10], detect_lang=False)))
    if args.langid:
        bench_langid()


def _tiny(tmp: Path) -> Path:
    p = tmp / "tiny.jsonl"
    p.write_text(json.dumps({"prompt": "", "completion": "<human>: Hi\n<bot>: Hello"}) + "\n")
    return p


if __name__ == "__main__":
    main()
