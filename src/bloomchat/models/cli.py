"""`bloomchat base import PATH -o base/`: a GGUF file or local checkpoint in as a plain base.

    bloomchat base import SmolLM2-135M-Instruct.Q4_1.gguf -o base/ [--dtype fp32|bf16] [--force]

The output is an ordinary HF folder (safetensors, tokenizer with its chat template, no
quantization_config) that every verb takes: pack, train, chat, serve, eval, arena generate.
"""

from __future__ import annotations

import json


def cmd_import(args) -> int:
    from bloomchat.models.base_import import IMPORT_RECORD, import_base

    rec = import_base(args.path, args.output, dtype=args.dtype, force=args.force)
    print(f"imported {rec['architecture']} ({rec['parameters'] / 1e6:.1f}M parameters, {rec['dtype']}) "
          f"from {rec['format']} -> {args.output}  (provenance: {IMPORT_RECORD}, sha256 {rec['sha256'][:12]}...)")
    if args.json:
        print(json.dumps(rec, indent=1))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("base", help="bring a pretrained model in as a base (GGUF or local checkpoint)",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="base_cmd", metavar="COMMAND", required=True)
    s = sub.add_parser("import", help="GGUF file (de-quantised) or local HF checkpoint -> plain HF safetensors base")
    s.add_argument("path", help="a .gguf file or a Hugging Face checkpoint folder")
    s.add_argument("-o", "--output", required=True, help="output folder (must be empty unless --force)")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="dtype of the written weights (fp32 for CPU training, bf16 halves the size)")
    s.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    s.add_argument("--json", action="store_true", help="also print the provenance record")
    s.set_defaults(func=cmd_import)
