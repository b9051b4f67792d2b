"""Translation: FLORES, WMT and jsonl layouts; chat-template prompts; BLEU and chrF++ by sacrebleu.

Layouts (`--format`, or detected from the path):

    flores   a folder of aligned files, one sentence a line: devtest.en.txt, devtest.zh.txt ...
             (or FLORES-200's eng_Latn.devtest ...); line i of every file is the same sentence.
    wmt      a folder (or one source file) of pairs: newstest22.en-zh.en (source) + .zh (reference).
    jsonl    {"src", "ref", "src_lang", "tgt_lang"} a line, or {"translation": {"en": .., "zh": ..}}
             with --directions.

Scoring: sacrebleu corpus BLEU with tokenizer `zh` for Chinese targets, `char` for Japanese,
Korean and Thai (sacrebleu's `ja-mecab`/`ko-mecab` need MeCab, `flores200` downloads a
SentencePiece model: neither works offline), `13a` otherwise; chrF++ (chrF with word bigrams,
word_order=2). Each direction's signatures are stored with its numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bloomchat.errors import BloomchatError
from bloomchat.eval.backends import GenParams
from bloomchat.eval.metrics import Metric, mean_metric, sacrebleu_metric
from bloomchat.eval.readers import existing, field as get_field, iter_jsonl, read_lines
from bloomchat.eval.task import EvalTask
from bloomchat.langs import lang_name, lang_of_aligned_file, lookup_lang, normalize_lang

DEFAULT_PROMPT = "Translate the following {src_name} text into {tgt_name}:\n{text}"
#: Longest FLORES/WMT sentence is ~450 characters; at >= 1 character per BLOOM token for Chinese
#: that is <= ~450 tokens, so 256 new tokens cover all but a handful (they count as hit_limit).
DEFAULT_MAX_NEW_TOKENS = 256


def bleu_tokenizer(tgt_lang: str) -> str:
    if tgt_lang == "zh":
        return "zh"
    if tgt_lang in ("ja", "ko", "th", "my", "km", "lo"):
        return "char"
    return "13a"


def parse_directions(text: str | None, where: str = "--directions") -> list[tuple[str, str]] | None:
    """'en-zh,zh-en' -> [('en','zh'), ('zh','en')]."""
    if not text:
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        bits = re.split(r"->|-|>|:", part)
        bits = [b for b in bits if b]
        if len(bits) != 2:
            raise BloomchatError(f"direction {part!r} is not SRC-TGT (e.g. en-zh)", where=where)
        s, t = (normalize_lang(b, where) for b in bits)
        if s == t:
            raise BloomchatError(f"direction {part!r} translates a language into itself", where=where)
        out.append((s, t))
    return out


# ---------------------------------------------------------------------------------- loaders
@dataclass
class Pair:
    src_lang: str
    tgt_lang: str
    src: str
    ref: str
    where: str  # file:line of the source sentence


def load_flores(path: str | Path, directions: list[tuple[str, str]] | None, split: str | None = None) -> list[Pair]:
    """Aligned one-sentence-a-line files in a folder; directions default to en <-> each language."""
    root = existing(path, "FLORES folder")
    if not root.is_dir():
        raise BloomchatError("the FLORES layout is a folder of aligned files (devtest.en.txt ...)", where=str(root))
    files: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.name.startswith(("_", ".")) or p.suffix.lower() in (".md", ".json", ".jsonl"):
            continue
        if split and split not in p.name.split("."):
            continue
        lang = lang_of_aligned_file(p)
        if lang is None:
            continue
        if lang in files:
            raise BloomchatError(f"two files for language {lang}: {files[lang].name} and {p.name}; "
                                 "pick one with --split", where=str(root))
        files[lang] = p
    if len(files) < 2:
        raise BloomchatError("need at least two language files (e.g. devtest.en.txt, devtest.zh.txt)", where=str(root))
    if directions is None:
        langs = sorted(files)
        if "en" in files:
            directions = [d for x in langs if x != "en" for d in (("en", x), (x, "en"))]
        else:
            directions = [(a, b) for a in langs for b in langs if a != b]
    needed = sorted({x for d in directions for x in d})
    for x in needed:
        if x not in files:
            raise BloomchatError(f"no file for language {x}; found {', '.join(sorted(files))}", where=str(root))
    lines = {x: read_lines(files[x]) for x in needed}
    first = needed[0]
    for x in needed[1:]:
        if len(lines[x]) != len(lines[first]):
            longer = x if len(lines[x]) > len(lines[first]) else first
            raise BloomchatError(  # where: the first line of the longer file that has no counterpart
                f"files are not aligned: {files[x].name} has {len(lines[x])} lines, "
                f"{files[first].name} has {len(lines[first])}",
                where=f"{files[longer]}:{min(len(lines[x]), len(lines[first])) + 1}")
    pairs = []
    for s, t in directions:
        for i, (a, b) in enumerate(zip(lines[s], lines[t]), 1):
            pairs.append(Pair(s, t, a, b, f"{files[s]}:{i}"))
    return pairs


_WMT_RE = re.compile(r"^(?P<prefix>.+)\.(?P<s>[A-Za-z_]+)-(?P<t>[A-Za-z_]+)\.(?P<side>[A-Za-z_]+)$")


def load_wmt(path: str | Path, directions: list[tuple[str, str]] | None) -> list[Pair]:
    """Source + reference file per pair: PREFIX.src-tgt.src and PREFIX.src-tgt.tgt."""
    root = existing(path, "WMT folder or source file")
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    found: dict[tuple[str, str], tuple[Path, Path]] = {}
    for p in files:
        m = _WMT_RE.match(p.name)
        if not m or m["side"] != m["s"]:
            continue
        s, t = lookup_lang(m["s"]), lookup_lang(m["t"])
        if not s or not t:
            raise BloomchatError(f"unknown language code in file name ({m['s']}-{m['t']})", where=str(p))
        ref = p.with_name(f"{m['prefix']}.{m['s']}-{m['t']}.{m['t']}")
        if not ref.exists():
            raise BloomchatError(f"no reference file {ref.name} for this source", where=str(p))
        if (s, t) in found:
            raise BloomchatError(f"two sources for {s}-{t}: {found[(s, t)][0].name} and {p.name}", where=str(root))
        found[(s, t)] = (p, ref)
    if not found:
        raise BloomchatError("no WMT pair files (PREFIX.src-tgt.src with PREFIX.src-tgt.tgt)", where=str(root))
    if directions is None:
        directions = sorted(found)
    pairs = []
    for d in directions:
        if d not in found:
            raise BloomchatError(f"no files for {d[0]}-{d[1]}; found {', '.join(f'{a}-{b}' for a, b in sorted(found))}",
                                 where=str(root))
        src_p, ref_p = found[d]
        src, ref = read_lines(src_p), read_lines(ref_p)
        if len(src) != len(ref):
            raise BloomchatError(f"source and reference are not aligned: {src_p.name} has {len(src)} lines, "
                                 f"{ref_p.name} has {len(ref)}",
                                 where=f"{src_p if len(src) > len(ref) else ref_p}:{min(len(src), len(ref)) + 1}")
        pairs.extend(Pair(d[0], d[1], a, b, f"{src_p}:{i}") for i, (a, b) in enumerate(zip(src, ref), 1))
    return pairs


def load_jsonl_pairs(path: str | Path, directions: list[tuple[str, str]] | None) -> list[Pair]:
    """{"src","ref","src_lang","tgt_lang"} records, or {"translation": {lang: text}} with --directions."""
    p = existing(path)
    pairs = []
    for line, rec in iter_jsonl(p):
        where = f"{p}:{line}"
        if not isinstance(rec, dict):
            raise BloomchatError("each line must be a JSON object", where=where)
        if "translation" in rec:
            tr = get_field(rec, ("translation",), where, kind=dict)
            if directions is None:
                raise BloomchatError('{"translation": {...}} records need --directions (e.g. en-zh)', where=where)
            by_lang = {}
            for k, v in tr.items():
                by_lang[normalize_lang(k, f"{where} field translation.{k}")] = v
            for s, t in directions:
                if s in by_lang and t in by_lang:
                    for x in (s, t):
                        if not isinstance(by_lang[x], str) or not by_lang[x].strip():
                            raise BloomchatError(f"empty or non-string translation.{x}", where=where)
                    pairs.append(Pair(s, t, by_lang[s], by_lang[t], where))
            continue
        src = get_field(rec, ("src", "source"), where)
        ref = get_field(rec, ("ref", "reference", "tgt", "target"), where)
        s = normalize_lang(get_field(rec, ("src_lang", "source_lang"), where), f"{where} field src_lang")
        t = normalize_lang(get_field(rec, ("tgt_lang", "target_lang"), where), f"{where} field tgt_lang")
        for name, v in (("src", src), ("ref", ref)):
            if not v.strip():
                raise BloomchatError(f"empty {name}", where=where)
        if directions is None or (s, t) in directions:
            pairs.append(Pair(s, t, src, ref, where))
    return pairs


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.is_file():
        if p.suffix in (".jsonl", ".json"):
            return "jsonl"
        if _WMT_RE.match(p.name):
            return "wmt"
    elif p.is_dir():
        names = [q.name for q in p.iterdir()]
        if any(_WMT_RE.match(n) for n in names):
            return "wmt"
        return "flores"
    raise BloomchatError("cannot tell the translation layout; pass --format flores|wmt|jsonl", where=str(p))


def translation_metrics(group: str, bleu_tokenize: str | None = None) -> list[Metric]:
    """BLEU, chrF++ and the share of outputs cut by max_new_tokens, for direction `group`."""
    from sacrebleu.metrics import BLEU, CHRF

    tok = bleu_tokenize or bleu_tokenizer(group.split("-")[1])
    return [
        sacrebleu_metric("bleu", lambda: BLEU(tokenize=tok)),
        sacrebleu_metric("chrf++", lambda: CHRF(word_order=2)),
        mean_metric("hit_limit", lambda r: bool(r.get("hit_limit")), percent=True, higher_is_better=False),
    ]


# ------------------------------------------------------------------------------------- task
@dataclass
class TranslationTask(EvalTask):
    data: str
    format: str = "auto"
    directions: list[tuple[str, str]] | None = None
    split: str | None = None
    limit: int | None = None
    shots: int = 0
    prompt: str = DEFAULT_PROMPT
    first_line: bool = True  # one sentence in, one line out: later lines are the model rambling on
    params: GenParams = field(default_factory=lambda: GenParams(max_new_tokens=DEFAULT_MAX_NEW_TOKENS))
    bleu_tokenize: str | None = None  # override for every direction
    name: str = ""
    kind: str = "translation"
    chart_metrics = ("bleu", "chrf++")

    def __post_init__(self):
        if self.format == "auto":
            self.format = detect_format(self.data)
        if not self.name:
            self.name = f"translation-{Path(self.data).stem or Path(self.data).name}"
        for key in ("{text}",):
            if key not in self.prompt:
                raise BloomchatError(f"the prompt template must contain {key}", where="--prompt")
        self._examples: list[dict] | None = None
        self._shots: dict[tuple[str, str], list[Pair]] = {}

    def _load(self) -> list[Pair]:
        if self.format == "flores":
            return load_flores(self.data, self.directions, self.split)
        if self.format == "wmt":
            return load_wmt(self.data, self.directions)
        if self.format == "jsonl":
            return load_jsonl_pairs(self.data, self.directions)
        raise BloomchatError(f"unknown translation format {self.format!r}; use flores, wmt or jsonl", where="--format")

    def examples(self) -> list[dict]:
        if self._examples is not None:
            return self._examples
        by_dir: dict[tuple[str, str], list[Pair]] = {}
        for p in self._load():
            by_dir.setdefault((p.src_lang, p.tgt_lang), []).append(p)
        if not by_dir:
            raise BloomchatError("no sentence pairs to evaluate" + (
                f" for directions {', '.join(f'{s}-{t}' for s, t in self.directions)}" if self.directions else ""),
                where=self.data)
        out = []
        for d, pairs in by_dir.items():
            if self.shots:
                if len(pairs) <= self.shots:
                    raise BloomchatError(f"{d[0]}-{d[1]} has {len(pairs)} pairs, not more than --shots {self.shots}",
                                         where=self.data)
                self._shots[d] = pairs[: self.shots]  # shot pairs are taken out of the evaluated set
                pairs = pairs[self.shots:]
            if self.limit:
                pairs = pairs[: self.limit]
            for p in pairs:
                out.append({"id": f"{d[0]}-{d[1]}:{p.where.rsplit(':', 1)[-1]}", "group": f"{d[0]}-{d[1]}",
                            "src_lang": d[0], "tgt_lang": d[1], "src": p.src, "ref": p.ref, "where": p.where})
        self._examples = out
        return out

    def _user(self, src_lang: str, tgt_lang: str, text: str) -> str:
        return self.prompt.format(src_name=lang_name(src_lang), tgt_name=lang_name(tgt_lang),
                                  src_lang=src_lang, tgt_lang=tgt_lang, text=text)

    def chat(self, ex: dict) -> list[dict]:
        """Few-shot pairs as earlier turns of the same chat, then the sentence to translate."""
        msgs = []
        for p in self._shots.get((ex["src_lang"], ex["tgt_lang"]), []):
            msgs.append({"role": "user", "content": self._user(p.src_lang, p.tgt_lang, p.src)})
            msgs.append({"role": "assistant", "content": p.ref})
        msgs.append({"role": "user", "content": self._user(ex["src_lang"], ex["tgt_lang"], ex["src"])})
        return msgs

    def sort_key(self, ex: dict) -> int:
        return -len(ex["src"])

    def run_batch(self, backend, batch: Sequence[dict]) -> list[dict]:
        replies = backend.generate([self.chat(ex) for ex in batch], self.params)
        recs = []
        for ex, r in zip(batch, replies):
            hyp = r.text
            if self.first_line:
                hyp = next((ln.strip() for ln in hyp.split("\n") if ln.strip()), "")
            rec = {"id": ex["id"], "group": ex["group"], "src": ex["src"], "ref": ex["ref"], "hyp": hyp,
                   "new_tokens": r.new_tokens, "hit_limit": r.hit_limit}
            if hyp != r.text:
                rec["raw"] = r.text
            recs.append(rec)
        return recs

    def _tokenize_for(self, group: str) -> str:
        return self.bleu_tokenize or bleu_tokenizer(group.split("-")[1])

    def metrics(self, group: str) -> list[Metric]:
        return translation_metrics(group, self.bleu_tokenize)

    def overall(self) -> bool:
        return False

    def extra_summary(self, records: Sequence[dict]) -> dict:
        """sacrebleu signatures per direction (sacrebleu fills them in only after scoring)."""
        from sacrebleu.metrics import BLEU, CHRF

        sigs = {}
        for g in dict.fromkeys(r["group"] for r in records):
            recs = [r for r in records if r["group"] == g]
            hyps, refs = [r["hyp"] for r in recs], [[r["ref"] for r in recs]]
            bleu, chrf = BLEU(tokenize=self._tokenize_for(g)), CHRF(word_order=2)
            bleu.corpus_score(hyps, refs)
            chrf.corpus_score(hyps, refs)
            sigs[g] = {"bleu": bleu.get_signature().format(), "chrf++": chrf.get_signature().format()}
        return {"signatures": sigs}

    def config(self) -> dict:
        return {"task": self.kind, "data": str(Path(self.data).resolve()), "format": self.format,
                "directions": [f"{s}-{t}" for s, t in self.directions] if self.directions else "all",
                "split": self.split, "limit": self.limit, "shots": self.shots, "prompt": self.prompt,
                "first_line": self.first_line, "generation": self.params.to_dict(),
                "bleu_tokenize": self.bleu_tokenize,
                "bleu_tokenize_default": "zh for zh targets, char for ja/ko/th/my/km/lo, else 13a",
                "chrf": "chrF++ (word_order=2)"}
