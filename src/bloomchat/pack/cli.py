"""`bloomchat pack`: tokenise prepared conversations and pack them into training shards.

    bloomchat pack prepared.jsonl --tokenizer bigscience/bloom-560m -o packed/
    bloomchat pack oasst1.jsonl dolly.jsonl --tokenizer ./tok -o packed/ --packing bfd --dev-ratio 0.01 --num-proc 4
    bloomchat pack prepared.jsonl --tokenizer ./smollm2 -o packed/ --chat-format base   # the tokenizer's own template
    bloomchat pack prepared.jsonl --tokenizer ./tok -o packed/ --loss-on conversation --overlong drop  # BLOOMChat as run
    bloomchat pack-check packed/ --tokenizer ./tok      # do these shards belong to this tokenizer?
    bloomchat pack-show packed/ --rows 2 [--html rows.html]   # decoded rows, loss spans marked
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomchat.chat_tokens import CHAT_FORMATS, LOSS_ON
from bloomchat.pack.packers import PACKINGS
from bloomchat.pack.pipeline import DEFAULT_OPTIONS, OVERLONG


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pack",
        help="tokenise prepared JSONL into loss-masked, packed parquet shards",
        description="Tokenise prepared conversations (loss only on bot replies and their EOS) and pack them "
        "into OUTDIR/{train,dev}/*.parquet with OUTDIR/stats.json.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="prepared JSONL file(s) or directories of them")
    p.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer dir or name (the base model's)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    p.add_argument("--max-seq-length", type=int, default=2048, help="tokens per packed row (BLOOMChat: 2048)")
    p.add_argument("--packing", choices=PACKINGS, default="greedy",
                   help="greedy (BLOOMChat), full, single, or bfd (best-fit decreasing, least padding)")
    p.add_argument("--dev-ratio", type=float, default=0.0, help="share of conversations held out as dev")
    p.add_argument("--num-proc", type=int, default=1, help="tokenizer processes (output is the same for any)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev split and of bfd's shuffle")
    p.add_argument("--overlong", choices=OVERLONG, default="split",
                   help="conversations longer than --max-seq-length: split into pieces (later pieces train a reply "
                   "without its prompt), or drop them as BLOOMChat's packing did (counted)")
    p.add_argument("--chat-format", choices=CHAT_FORMATS, default="bloomchat",
                   help="bloomchat: BLOOMChat's '<human>: ... <bot>: ...' text (default); base: the tokenizer's own "
                   "chat template (e.g. SmolLM2's ChatML), loss on its assistant turns")
    p.add_argument("--loss-on", choices=LOSS_ON, default="replies",
                   help="replies: loss on each bot reply and its EOS (default); conversation: every token, one EOS "
                   "at the end, the verbatim text (BLOOMChat's scripts as they ran)")
    p.add_argument("--window", type=int, default=DEFAULT_OPTIONS["window"],
                   help="bfd: conversations sorted and packed together")
    p.add_argument("--shard-rows", type=int, default=DEFAULT_OPTIONS["shard_rows"], help="rows per shard file")
    p.add_argument("--skip-invalid", action="store_true",
                   help="count and skip lines that are not prepared records instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_pack)

    c = subparsers.add_parser("pack-check", help="check that packed shards were made by a tokenizer")
    c.add_argument("packed", type=Path, help="a `bloomchat pack` output directory")
    c.add_argument("--tokenizer", required=True, help="the tokenizer training will use")
    c.set_defaults(func=_run_check)

    v = subparsers.add_parser("pack-show", help="print packed rows decoded, with the loss-bearing spans marked")
    v.add_argument("packed", type=Path, help="a `bloomchat pack` output directory")
    v.add_argument("--tokenizer", help="tokenizer to decode with (default: the one stats.json names)")
    v.add_argument("--split", choices=("train", "dev"), default="train")
    v.add_argument("--start", type=int, default=0, help="first row to show")
    v.add_argument("--rows", type=int, default=1, help="how many rows")
    v.add_argument("--html", type=Path, help="write an HTML page (loss spans in green) instead of printing")
    v.set_defaults(func=_run_show)


def _run_pack(args: argparse.Namespace) -> int:
    from bloomchat.pack import pack

    s = pack(args.inputs, args.tokenizer, args.out, max_seq_length=args.max_seq_length, packing=args.packing,
             dev_ratio=args.dev_ratio, num_proc=args.num_proc, seed=args.seed, overlong=args.overlong,
             chat_format=args.chat_format, loss_on=args.loss_on,
             window=args.window, shard_rows=args.shard_rows, skip_invalid=args.skip_invalid,
             progress=not args.no_progress)
    tr, dv = s["split"]["train"], s["split"]["dev"]
    print(f"packed {s['conversations']:,} conversations into {s['sequences']:,} rows of <= {s['max_seq_length']} "
          f"tokens ({s['packing']}): train {tr['sequences']:,} rows, dev {dv['sequences']:,} rows")
    print(f"tokens {s['tokens']:,}, loss tokens {s['loss_tokens']:,} ({s['loss_tokens'] / max(1, s['tokens']):.1%}); "
          f"padding {s['padding_fraction']:.2%} (train {tr['padding_fraction']:.2%}, where greedy would give "
          f"{tr['padding_fraction_greedy']:.2%} and single {tr['padding_fraction_single']:.2%})")
    d = s["dropped_by_reason"]
    print(f"dropped {s['dropped']:,} records (no bot turn {d['no_bot_turn']:,}, invalid {d['invalid']:,}, "
          f"overlong {d['overlong']:,}); overlong conversations {s['overlong']['conversations']:,} "
          f"({s['overlong']['action']})")
    tc = s["text_changes"]
    changed = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in tc["by_reason"].items() if v) or "none"
    print(f"chat format {s['chat_format']}, loss on {s['loss_on']}; {tc['records']:,} records trained on text that "
          f"differs from their verbatim text ({changed})")
    print(f"tokenizer {s['tokenizer']['name']} (vocab {s['tokenizer']['vocab_size']:,}, "
          f"fingerprint {s['tokenizer']['fingerprint']}); {s['timing']['tokens_per_s']:,} tokens/s")
    print(f"wrote {args.out}/stats.json, {args.out}/lengths.png, "
          f"{len(s['shards']['train'])} train and {len(s['shards']['dev'])} dev shard(s)")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from bloomchat.pack import check_tokenizer_matches

    s = check_tokenizer_matches(args.packed, args.tokenizer)
    print(f"ok: {args.packed} was packed with tokenizer {s['tokenizer']['name']} "
          f"(fingerprint {s['tokenizer']['fingerprint']})")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from bloomchat.pack.show import iter_shown, load_stats_tokenizer, plain, write_html

    stats, tok = load_stats_tokenizer(args.packed, args.tokenizer)
    shown = list(iter_shown(args.packed, tok, split=args.split, start=args.start, rows=args.rows))
    if args.html:
        write_html(args.html, shown, stats)
        print(f"wrote {args.html} ({len(shown)} rows)")
    else:
        for item in shown:
            print(plain(*item))
    return 0
