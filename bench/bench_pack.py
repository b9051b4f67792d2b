"""Benchmark `bloomchat pack` on the real Dolly-15k + OASST1 data at 2048 tokens.

    python bench/bench_pack.py                       # all packings, 1 process, data x1 and x4
    python bench/bench_pack.py --packings bfd greedy --num-proc 1 2 --scale 1 --json bench_pack.json

Prints, per packing: tokens/s, peak resident memory (of a fresh process running only `pack`,
with the memory it had before `pack` started shown apart), rows, and the padding fraction
(1 - tokens / (rows x 2048)). Scale 4 repeats the input 4 times (ids made unique) to show that
memory stays flat as the input grows (streaming) while bfd's fill holds.

Tokenizer: a byte-level BPE (vocab 32,000) trained here on the same data with
`bloomchat.models.train_bpe_tokenizer`. It is NOT BLOOM's 250,680-token tokenizer, which cannot be
downloaded on this machine; BLOOM's cuts English into ~10-20% fewer tokens, so rows hold more
conversations and padding differences between packers shift a little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BLOOMCHAT_SHARED_DATA", REPO.parent / "shared" / "data"))
DOLLY = DATA / "dolly15k" / "databricks-dolly-15k.from-docx.jsonl"
OASST = DATA / "oasst1" / "oasst1_validation_en.messages.jsonl"

_CHILD = r"""
import json, resource, sys, time
from bloomchat.models import load_tokenizer
from bloomchat.pack import pack
inp, tok_dir, out, packing, num_proc = sys.argv[1:6]
tok = load_tokenizer(tok_dir)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
s = pack(inp, tok, out, max_seq_length=2048, packing=packing, num_proc=int(num_proc), progress=False, plot=False)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"stats": s, "wall_s": wall, "rss_before_kb": before, "rss_peak_kb": peak, "child_peak_kb": kids}))
"""


def _prepare(work: Path) -> Path:
    from bloomchat.data import prepare

    out = work / "dolly_oasst1.jsonl"
    prepare(out=out, dolly=[DOLLY], oasst1=[OASST], progress=False)
    return out


def _scaled(src: Path, k: int) -> Path:
    """The prepared file repeated k times, ids suffixed so each copy is its own conversation."""
    if k == 1:
        return src
    out = src.with_name(f"{src.stem}.x{k}.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for i in range(k):
            for line in open(src, encoding="utf-8"):
                rec = json.loads(line)
                rec["id"] = f"{rec['id']}#{i}"
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out


def _tokenizer(prepared: Path, work: Path, vocab: int) -> Path:
    from bloomchat.models import train_bpe_tokenizer
    from bloomchat.models.tokenizer import save_tokenizer

    texts = [json.loads(line)["completion"] for line in open(prepared, encoding="utf-8")]
    return save_tokenizer(train_bpe_tokenizer(texts, vocab_size=vocab), work / "tok")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packings", nargs="+", default=["single", "greedy", "full", "bfd"])
    ap.add_argument("--num-proc", nargs="+", type=int, default=[1])
    ap.add_argument("--scale", nargs="+", type=int, default=[1, 4], help="input repeated k times (bfd only for k>1)")
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if not (DOLLY.exists() and OASST.exists()):
        print(f"real data not found under {DATA}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        work = Path(tmp)
        prepared = _prepare(work)
        tok = _tokenizer(prepared, work, args.vocab)
        print(f"data: {prepared.stat().st_size / 1e6:.1f} MB prepared Dolly-15k + OASST1 (en validation); "
              f"tokenizer: byte-level BPE, vocab {args.vocab:,}, trained on it (not BLOOM's 250,680)")
        print(f"{'packing':8} {'scale':>5} {'proc':>4} {'convs':>7} {'tokens':>10} {'rows':>6} {'padding':>8} "
              f"{'tok/s':>9} {'wall s':>7} {'RSS before':>10} {'RSS peak':>9}")
        runs = [(p, 1, n) for p in args.packings for n in args.num_proc if 1 in args.scale]
        runs += [("bfd", k, n) for k in args.scale if k > 1 for n in args.num_proc]
        for packing, k, num_proc in runs:
            inp = _scaled(prepared, k)
            out = work / f"out_{packing}_{k}_{num_proc}"
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(inp), str(tok), str(out), packing, str(num_proc)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            s = r["stats"]
            row = {"packing": packing, "scale": k, "num_proc": num_proc, "conversations": s["conversations"],
                   "tokens": s["tokens"], "rows": s["sequences"], "padding_fraction": s["padding_fraction"],
                   "tokens_per_s": s["tokens"] / r["wall_s"], "wall_s": r["wall_s"],
                   "rss_before_mb": r["rss_before_kb"] / 1024, "rss_peak_mb": r["rss_peak_kb"] / 1024,
                   "workers_peak_mb": r["child_peak_kb"] / 1024}
            results.append(row)
            print(f"{packing:8} {k:>5} {num_proc:>4} {row['conversations']:>7,} {row['tokens']:>10,} {row['rows']:>6,} "
                  f"{row['padding_fraction']:>8.2%} {row['tokens_per_s']:>9,.0f} {row['wall_s']:>7.1f} "
                  f"{row['rss_before_mb']:>8.0f}MB {row['rss_peak_mb']:>7.0f}MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
