"""A saved tokenizer (tokenizer.json + tokenizer_config.json) as llama.cpp's GGUF tokenizer metadata.

llama.cpp does not run the `tokenizers` pipeline: it re-implements a fixed set of pre-tokenizers,
chosen by the string `tokenizer.ggml.pre`. Its own converter picks that string from a hash of
how the tokenizer splits a test text, and refuses any tokenizer whose hash it has not seen, which
is every tokenizer trained here. We pick it from the pipeline's structure instead, for the
byte-level BPE pipelines whose split llama.cpp implements the same way:

    ByteLevel(use_regex=True)                         -> "gpt-2"   (GPT-2's regex; bloomchat's own
                                                                     tokenizers, GPT-2, and a Llama
                                                                     tokenizer imported from a GGUF)
    Sequence[Digits(individual), ByteLevel(regex)]    -> "smollm"  (SmolLM/SmolLM2, StarCoder kin:
                                                                     each digit alone, then GPT-2's)
    Sequence[Split(BLOOM's regex), ByteLevel(no regex)] -> "bloom" (bigscience/bloom-*)
    Sequence[Split(Llama 3's regex), ByteLevel(no regex)] -> "llama-bpe"

Anything else is refused with a message that says what was found. The bench and the tests check
the choice the direct way: the ids llama.cpp (llama-cpp-python) gives equal transformers' ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bloomchat.errors import BloomchatError

# llama.cpp's token types (gguf.TokenType): what llama.cpp does with each token.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

#: bigscience/bloom's split pattern, as its tokenizer.json writes it.
BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"
#: Llama 3's split pattern (tiktoken cl100k-like), as its tokenizer.json writes it.
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


@dataclass
class GGUFVocab:
    """What goes under `tokenizer.*` in the GGUF file."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    eos_token: str | None


def _is_byte_level(pt: dict | None, *, regex: bool) -> bool:
    return (bool(pt) and pt.get("type") == "ByteLevel" and bool(pt.get("use_regex", True)) == regex
            and not pt.get("add_prefix_space", False))


def _split_pattern(pt: dict) -> str | None:
    if pt.get("type") != "Split" or pt.get("invert"):
        return None
    pattern = pt.get("pattern") or {}
    return pattern.get("Regex")


def pre_tokenizer_type(tokenizer_json: dict, *, where: str = "tokenizer.json") -> str:
    """llama.cpp's `tokenizer.ggml.pre` for this byte-level BPE pipeline (see module docstring)."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise BloomchatError(f"only byte-level BPE tokenizers can be exported to GGUF (found a "
                             f"{model.get('type')} model{' with byte fallback' if model.get('byte_fallback') else ''})",
                             where=where)
    if tokenizer_json.get("normalizer"):
        raise BloomchatError(f"tokenizer has a normalizer ({tokenizer_json['normalizer'].get('type')}), "
                             "which llama.cpp's byte-level BPE does not apply", where=where)
    dec = tokenizer_json.get("decoder") or {}
    if dec.get("type") != "ByteLevel":
        raise BloomchatError(f"tokenizer decoder is {dec.get('type')}, not ByteLevel", where=where)
    pt = tokenizer_json.get("pre_tokenizer") or {}
    if _is_byte_level(pt, regex=True):
        return "gpt-2"
    steps = pt.get("pretokenizers") if pt.get("type") == "Sequence" else None
    if steps and len(steps) == 2:
        first, second = steps
        if (first.get("type") == "Digits" and first.get("individual_digits")
                and _is_byte_level(second, regex=True)):
            return "smollm"
        if _is_byte_level(second, regex=False):
            pattern = _split_pattern(first)
            if pattern == BLOOM_SPLIT:
                return "bloom"
            if pattern == LLAMA3_SPLIT:
                return "llama-bpe"
    raise BloomchatError("llama.cpp has no pre-tokenizer known to split text like this tokenizer "
                         f"({json.dumps(pt, ensure_ascii=False)[:200]}); supported: GPT-2 byte-level, "
                         "SmolLM (digits + GPT-2), BLOOM and Llama 3 splits", where=where)


def _content(tok) -> str | None:
    if tok is None:
        return None
    return tok.get("content") if isinstance(tok, dict) else str(tok)


def _adds(post: dict | None, bos: str | None, eos: str | None) -> tuple[bool, bool]:
    """Whether the post-processor puts BOS first / EOS last on a single sequence."""
    if not post:
        return False, False
    if post.get("type") == "Sequence":
        found = [_adds(p, bos, eos) for p in post.get("processors") or []]
        return any(b for b, _ in found), any(e for _, e in found)
    if post.get("type") != "TemplateProcessing":
        return False, False
    single = post.get("single") or []
    special = lambda item: (item.get("SpecialToken") or {}).get("id")  # noqa: E731
    return (bool(single) and bos is not None and special(single[0]) == bos,
            bool(single) and eos is not None and special(single[-1]) == eos)


def _current_template(template: str | None) -> str | None:
    """A template bloomchat saved before EOS followed each assistant message is replaced by the
    current one: the GGUF then renders the ids training used, which the old text did not."""
    from bloomchat import chat_format

    if template in getattr(chat_format, "LEGACY_CHAT_TEMPLATES", ()):
        return chat_format.CHAT_TEMPLATE
    return template


def gguf_vocab(model_dir: str | Path, n_vocab: int) -> GGUFVocab:
    """Read the tokenizer saved in `model_dir`; pad the token list to the embedding's `n_vocab` rows.

    Rows past the tokenizer's vocabulary (BLOOM pads 250,680 tokens to 250,880 rows, the demo
    rounds up to a multiple of 64) become `[PADn]` tokens of type UNUSED, which llama.cpp never
    produces, as its converter does.
    """
    d = Path(model_dir)
    tj_path = d / "tokenizer.json"
    if not tj_path.is_file():
        raise BloomchatError("no tokenizer.json (a fast tokenizer is needed for GGUF export)", where=str(d))
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    pre = pre_tokenizer_type(tj, where=str(tj_path))

    by_id: dict[int, str] = {int(i): t for t, i in tj["model"]["vocab"].items()}
    types: dict[int, int] = {i: NORMAL for i in by_id}
    for added in tj.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    top = max(by_id) + 1
    if top > n_vocab:
        raise BloomchatError(f"tokenizer has ids up to {top - 1} but the model's embedding has only "
                             f"{n_vocab} rows", where=str(d))
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    type_list = [types.get(i, UNUSED) for i in range(n_vocab)]

    merges = []
    for m in tj["model"].get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2 or any(" " in p for p in pair):
            raise BloomchatError(f"merge {m!r} cannot be written as 'left right'", where=str(tj_path))
        merges.append(f"{pair[0]} {pair[1]}")

    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}  # first id wins on duplicates
    special = {k: _content(cfg.get(f"{k}_token")) for k in ("bos", "eos", "unk", "pad")}
    sid = {k: ids.get(v) if v is not None else None for k, v in special.items()}
    add_bos, add_eos = _adds(tj.get("post_processor"), special["bos"], special["eos"])
    if "add_bos_token" in cfg and tj.get("post_processor") is None:  # slow-style flag, no post-processor
        add_bos = bool(cfg["add_bos_token"])
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: llama.cpp reads the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    template = _current_template(template)
    return GGUFVocab(pre=pre, tokens=tokens, types=type_list, merges=merges, bos_id=sid["bos"],
                     eos_id=sid["eos"], unk_id=sid["unk"], pad_id=sid["pad"], add_bos=add_bos,
                     add_eos=add_eos, chat_template=template, eos_token=special["eos"])
