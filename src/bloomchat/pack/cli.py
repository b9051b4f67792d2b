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

from bloomchat.pack.options import add_option_flags, options_from_args


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
    add_option_flags(p)  # one flag per pack setting, from bloomchat.pack.options.PackOptions
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

    s = pack(args.inputs, args.tokenizer, args.out, **options_from_args(args))
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
