"""Verb `bloomchat export`: a saved model in the formats other engines load.

    bloomchat export gguf runs/demo/stage2/model -o demo.gguf --outtype f16     # + Modelfile beside it
    llama-cli -m demo.gguf -cnv        /   ollama create demo -f Modelfile && ollama run demo
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bloomchat.errors import BloomchatError


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a saved model for llama.cpp / Ollama (GGUF)",
                       description="Export a saved model for other engines. vLLM, TGI and transformers "
                                   "4.x/5.x load the saved folder itself; llama.cpp and Ollama need GGUF.")
    fmt = p.add_subparsers(dest="format", metavar="FORMAT")
    g = fmt.add_parser("gguf", help="one GGUF file for llama.cpp, plus an Ollama Modelfile beside it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("model", metavar="MODEL", help="model directory in Hugging Face layout (BLOOM or Llama family)")
    g.add_argument("-o", "--output", required=True, help="GGUF file to write (e.g. model.gguf)")
    g.add_argument("--outtype", choices=["f32", "f16", "q8_0"], default="f16",
                   help="weight type of 2-D tensors (norms and biases stay f32)")
    g.add_argument("--context-length", type=int, default=None,
                   help="context length to record (default: from config.json; 2048 for BLOOM)")
    g.add_argument("--no-modelfile", action="store_true", help="do not write an Ollama Modelfile")
    g.set_defaults(func=_gguf)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _gguf(args) -> int:
    from bloomchat.chat_format import CHAT_TEMPLATE
    from bloomchat.export.modelfile import modelfile_text
    from bloomchat.export.to_gguf import export_gguf

    if args.context_length is not None and args.context_length < 1:
        raise BloomchatError(f"must be at least 1 (got {args.context_length})", where="--context-length")
    res = export_gguf(args.model, args.output, outtype=args.outtype, context_length=args.context_length)
    print(f"wrote {res.path} ({res.arch}, {res.outtype}, {res.tensors} tensors, {res.bytes / 1e6:.1f} MB, "
          f"context {res.context_length}, vocab {res.n_vocab}, pre-tokenizer {res.pre_tokenizer!r})")
    if not args.no_modelfile:
        from bloomchat.export.vocab import gguf_vocab

        vocab = gguf_vocab(args.model, res.n_vocab)
        mf = res.path.parent / "Modelfile"
        _write_atomic(mf, modelfile_text(res.path.name, eos=vocab.eos_token,
                                         bloomchat_template=vocab.chat_template == CHAT_TEMPLATE))
        print(f"wrote {mf} (ollama create NAME -f {mf})")
    return 0
