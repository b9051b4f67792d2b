"""Fertility per language: how many tokens a tokenizer spends per word (per character for
scripts written without spaces: zh, ja, th, my, km, lo, bo), so users see what their languages
cost in context length and compute, and compare tokenizers on the same text.

    bloomchat eval run out/stage2 --task fertility --data ../shared/data/flores101 -o runs/bloom
    bloomchat eval run other-model --task fertility --data ../shared/data/flores101 -o runs/other
    bloomchat eval compare runs/bloom runs/other    # same sentences: paired differences per language

`--tokenizer PATH` measures another tokenizer than MODEL's (a folder, or a .gguf file). Texts:
a folder of one-sentence-a-line files named by language (FLORES: devtest.zh.txt), a prepared
JSONL (turn texts, its `lang` field), or any text file with --lang. Each line (or turn) is an
example; fertility is the ratio of sums (tokens / units over the language), with 95% bootstrap
intervals over lines. Tokens are counted without BOS/EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bloomchat.data.report import count_tokens, count_units
from bloomchat.errors import BloomchatError
from bloomchat.langs import lang_from_path, normalize_lang
from bloomchat.eval.metrics import Metric
from bloomchat.eval.readers import existing, iter_jsonl, read_lines
from bloomchat.eval.task import EvalTask, select_by_lang


def load_texts(path: str | Path, lang: str | None = None) -> list[dict]:
    p = existing(path)
    files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(("_", "."))
                   and q.suffix.lower() not in (".md", ".json")) if p.is_dir() else [p]
    items = []
    for f in files:
        if f.suffix.lower() == ".jsonl":
            for line, rec in iter_jsonl(f):
                where = f"{f}:{line}"
                if not isinstance(rec, dict):
                    raise BloomchatError("each line must be a JSON object", where=where)
                lg = rec.get("lang") or lang or lang_from_path(f)
                if not lg:
                    raise BloomchatError("no language (no 'lang' field); pass --lang", where=where)
                lg = normalize_lang(lg, f"{where} field lang")
                turns = rec.get("turns")
                texts = [t.get("text", "") for t in turns if isinstance(t, dict)] if isinstance(turns, list) else \
                    [rec.get("text") or rec.get("completion") or ""]
                for k, t in enumerate(x for x in texts if x and x.strip()):
                    items.append({"id": f"{f.stem}:{line}:{k}", "lang": lg, "text": t})
            continue
        lg = lang or lang_from_path(f)
        if not lg:
            if p.is_dir():
                continue  # a file that names no language in a folder of language files
            raise BloomchatError("no language in the file name (e.g. devtest.zh.txt); pass --lang", where=str(f))
        for i, t in enumerate(read_lines(f, allow_empty_lines=True), 1):
            if t.strip():
                items.append({"id": f"{f.name}:{i}", "lang": lg, "text": t})
    return items


def load_any_tokenizer(path: str):
    """A tokenizer folder or hub name (bloomchat.models.load_tokenizer), or a .gguf file."""
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise BloomchatError("tokenizer file not found", where=str(p))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    from bloomchat.models import load_tokenizer

    return load_tokenizer(path)


def _ratio(name: str, num: int, den: int, higher_is_better) -> Metric:
    def stats(recs):
        return np.array([[r[k] for k in ("tokens", "units", "chars")] for r in recs], dtype=np.float64).reshape(-1, 3)

    return Metric(name, stats, lambda s, n: float(s[num] / s[den]) if s[den] else float("nan"),
                  higher_is_better=higher_is_better)


def fertility_metrics() -> list[Metric]:
    """fertility: tokens per unit (word or character); chars_per_token: characters per token."""
    return [_ratio("fertility", 0, 1, False), _ratio("chars_per_token", 2, 0, True)]


@dataclass
class FertilityTask(EvalTask):
    data: str
    tokenizer: str | None = None  # default: the evaluated MODEL's tokenizer
    langs: list[str] | None = None
    lang: str | None = None
    limit: int | None = None
    format: str = "auto"
    name: str = ""
    kind: str = "fertility"
    chart_metrics = ("fertility",)
    generates = False

    def __post_init__(self):
        if not self.name:
            self.name = f"fertility-{Path(self.data).stem or Path(self.data).name}"
        self._examples = None
        self._tok = None

    def examples(self) -> list[dict]:
        if self._examples is None:
            self._examples = select_by_lang(load_texts(self.data, self.lang), langs=self.langs, limit=self.limit,
                                            where=self.data, what="texts")
        return self._examples

    def _tokenizer(self, backend):
        if self._tok is None:
            src = self.tokenizer or getattr(backend, "model_path", None)
            if not src:
                raise BloomchatError("fertility needs a tokenizer: a local MODEL or --tokenizer PATH",
                                     where="--tokenizer")
            self._tok = load_any_tokenizer(src)
        return self._tok

    def run_batch(self, backend, batch: Sequence[dict]) -> list[dict]:
        counts = count_tokens(self._tokenizer(backend), [ex["text"] for ex in batch])
        out = []
        for ex, n in zip(batch, counts):
            units, unit = count_units(ex["text"], ex["lang"])
            out.append({"id": ex["id"], "group": ex["group"], "tokens": n, "units": units, "unit": unit,
                        "chars": len(ex["text"])})
        return out

    def metrics(self, group: str) -> list[Metric]:
        return fertility_metrics()

    def overall(self) -> bool:
        return False  # words and characters do not pool

    def extra_summary(self, records: Sequence[dict]) -> dict:
        return {"units": {r["group"]: r["unit"] for r in records}}

    def config(self) -> dict:
        return {"task": self.kind, "data": str(Path(self.data).resolve()), "langs": self.langs or "all",
                "lang": self.lang, "limit": self.limit, "tokenizer": self.tokenizer or "the model's",
                "units": "words; characters (no whitespace) for zh, ja, th, my, km, lo, bo",
                "special_tokens": "not counted"}

