"""Multiple choice by log-likelihood, one documented jsonl form that XNLI, XWinograd,
XStoryCloze, PAWS-X and XCOPA all convert to.

The form, one JSON object a line:

    {"context": "The trophy doesn't fit ... because", "choices": [" it is too big.", " it is too small."],
     "label": 0, "lang": "en", "id": "optional"}

Each choice is scored as the continuation of `context`: the sum of log p(choice tokens |
context tokens); the prediction is the best choice. `context` may instead be a list with one
context per choice (Winograd "partial scoring": the candidates differ in the context, the
continuation after the pronoun is the same), and an empty context is replaced by BOS.

Normalisations, all reported, one chosen as primary with --norm:
    sum    raw sum of log-probabilities ("acc" in lm-evaluation-harness)
    mean   sum / number of continuation tokens (per-token mean)
    char   sum / number of characters of the continuation ("acc_norm" in lm-evaluation-harness)
    byte   sum / number of UTF-8 bytes of the continuation (tokenizer-free, fair across scripts)
Ties go to the first choice.

Formulations (--mc-format, XWinograd and XCOPA): `native` (default) scores the text as written;
`lm-eval` builds lm-evaluation-harness's requests, to compare with its published tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from bloomchat.errors import BloomchatError
from bloomchat.eval.metrics import Metric, mean_metric
from bloomchat.eval.readers import existing, iter_jsonl, read_table
from bloomchat.eval.task import EvalTask, select_by_lang
from bloomchat.langs import NO_SPACE_LANGS, lang_from_path, lang_from_path_tokens, normalize_lang

NORMS = ("sum", "mean", "char", "byte")
FORMATS = ("jsonl", "xnli", "xwinograd", "xstorycloze", "pawsx", "xcopa")
MC_FORMS = ("native", "lm-eval")


# --------------------------------------------------------------------------- the jsonl form
def validate_item(rec, where: str) -> dict:
    """Check one record of the documented form; returns it with `lang` normalised."""
    if not isinstance(rec, dict):
        raise BloomchatError("each line must be a JSON object", where=where)
    choices = rec.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise BloomchatError("field 'choices' must be a list of at least 2 strings", where=f"{where} field choices")
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c:
            raise BloomchatError(f"choices[{i}] must be a non-empty string", where=f"{where} field choices")
    ctx = rec.get("context", "")
    if isinstance(ctx, list):
        if len(ctx) != len(choices) or not all(isinstance(c, str) for c in ctx):
            raise BloomchatError(f"a list 'context' needs one string per choice ({len(choices)})",
                                 where=f"{where} field context")
    elif not isinstance(ctx, str):
        raise BloomchatError("field 'context' must be a string or a list of strings", where=f"{where} field context")
    label = rec.get("label")
    if not isinstance(label, int) or isinstance(label, bool):
        raise BloomchatError("field 'label' must be an integer index into 'choices'", where=f"{where} field label")
    if not 0 <= label < len(choices):
        raise BloomchatError(f"label {label} out of range for {len(choices)} choices", where=f"{where} field label")
    if "lang" not in rec:
        raise BloomchatError("missing field 'lang'", where=where)
    lang = normalize_lang(rec["lang"], f"{where} field lang")
    out = {"context": ctx, "choices": choices, "label": label, "lang": lang}
    if rec.get("id") is not None:
        out["id"] = str(rec["id"])
    return out


def load_mc_jsonl(path: str | Path) -> list[dict]:
    p = existing(path)
    items = []
    for line, rec in iter_jsonl(p):
        item = validate_item(rec, f"{p}:{line}")
        item.setdefault("id", f"{p.name}:{line}")
        item["where"] = f"{p}:{line}"
        items.append(item)
    return items


# ------------------------------------------------------------------------------ converters
def _rows(path: Path) -> list[tuple[str, dict]]:
    """(file:line, record) from a CSV/TSV with header or a jsonl file."""
    if path.suffix in (".jsonl", ".json"):
        out = []
        for line, rec in iter_jsonl(path):
            if not isinstance(rec, dict):
                raise BloomchatError("each line must be a JSON object", where=f"{path}:{line}")
            out.append((f"{path}:{line}", rec))
        return out
    return [(f"{path}:{line}", rec) for line, rec in read_table(path)]


def _row_lang(rec: dict, where: str, path: Path, lang: str | None) -> str:
    v = rec.get("lang") or rec.get("language")
    if v:
        return normalize_lang(v, f"{where} field lang")
    if lang:
        return lang
    found = lang_from_path(path)
    if found:
        return found
    raise BloomchatError("no language: the rows have no 'lang'/'language' column and the file name names none; "
                         "pass --lang", where=str(path))


def _get(rec: dict, names: Iterable[str], where: str) -> str:
    for n in names:
        if n in rec and rec[n] is not None:
            v = rec[n]
            if not isinstance(v, str):
                v = str(v)
            return v
    raise BloomchatError(f"missing column {' or '.join(names)}", where=where)


#: XNLI prompt words per language, as in lm-evaluation-harness (XGLM / mGPT prompt):
#: premise + ", QUESTION? " + (ENTAILMENT | NEUTRAL | CONTRADICTION) + ", " + hypothesis
XNLI_WORDS: dict[str, tuple[str, str, str, str]] = {
    "ar": ("صحيح", "نعم", "لذا", "رقم"), "bg": ("правилно", "да", "така", "не"),
    "de": ("richtig", "Ja", "Auch", "Nein"), "el": ("σωστός", "Ναί", "Έτσι", "όχι"),
    "en": ("right", "Yes", "Also", "No"), "es": ("correcto", "Sí", "Asi que", "No"),
    "fr": ("correct", "Oui", "Aussi", "Non"), "hi": ("सही", "हाँ", "इसलिए", "नहीं"),
    "ru": ("правильно", "Да", "Так", "Нет"), "sw": ("sahihi", "Ndiyo", "Hivyo", "Hapana"),
    "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"), "tr": ("doğru", "Evet", "Böylece", "Hayır"),
    "ur": ("صحیح", "جی ہاں", "اس لئے", "نہیں"), "vi": ("đúng", "Vâng", "Vì vậy", "Không"),
    "zh": ("正确", "是的", "所以", "不是的"),
}
_XNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def _label(value: str, names: dict[str, int], n: int, where: str) -> int:
    v = str(value).strip().lower()
    if v in names:
        return names[v]
    try:
        i = int(v)
    except ValueError:
        raise BloomchatError(f"label {value!r} is not one of {', '.join(names)} or 0..{n - 1}",
                             where=f"{where} field label") from None
    if not 0 <= i < n:
        raise BloomchatError(f"label {i} out of range for {n} choices", where=f"{where} field label")
    return i


def _prompt_words(table: dict[str, tuple], task: str, lang: str, where: str) -> tuple:
    if lang not in table:
        raise BloomchatError(f"no {task} prompt words for language {lang} (have {', '.join(sorted(table))})",
                             where=where)
    return table[lang]


def convert_xnli(path: Path, lang: str | None = None) -> list[dict]:
    """XNLI-1.0 xnli.{dev,test}.tsv (language, gold_label, sentence1, sentence2) or HF rows
    (premise, hypothesis, label 0 entailment / 1 neutral / 2 contradiction)."""
    items = []
    for where, rec in _rows(path):
        lg = _row_lang(rec, where, path, lang)
        q, yes, also, no = _prompt_words(XNLI_WORDS, "XNLI", lg, where)
        premise = _get(rec, ("premise", "sentence1"), where).strip()
        hyp = _get(rec, ("hypothesis", "sentence2"), where).strip()
        label = _label(_get(rec, ("label", "gold_label"), where), _XNLI_LABELS, 3, where)
        items.append({"id": f"xnli-{lg}:{where.rsplit(':', 1)[1]}", "lang": lg, "label": label,
                      "context": f"{premise}, {q}?",
                      "choices": [f" {w}, {hyp}" for w in (yes, also, no)], "where": where})
    return items


#: PAWS-X prompt words (lm-evaluation-harness): sentence1 + ", QUESTION? " + (Yes|No) + ", " + sentence2
PAWSX_WORDS: dict[str, tuple[str, str, str]] = {
    "en": ("right", "Yes", "No"), "de": ("richtig", "Ja", "Nein"), "es": ("verdad", "Sí", "No"),
    "fr": ("n'est-ce pas", "Oui", "Non"), "ja": ("ですね", "はい", "いいえ"), "ko": ("맞죠", "예", "아니요"),
    "zh": ("对吧", "是", "不是"),
}


def convert_pawsx(path: Path, lang: str | None = None) -> list[dict]:
    """PAWS-X x-final/<lang>/{dev_2k,test_2k}.tsv (id, sentence1, sentence2, label 1 = paraphrase)."""
    items = []
    for where, rec in _rows(path):
        lg = _row_lang(rec, where, path, lang)
        q, yes, no = _prompt_words(PAWSX_WORDS, "PAWS-X", lg, where)
        s1, s2 = _get(rec, ("sentence1",), where).strip(), _get(rec, ("sentence2",), where).strip()
        label = _label(_get(rec, ("label",), where), {"no": 0, "yes": 1}, 2, where)
        items.append({"id": f"pawsx-{lg}:{where.rsplit(':', 1)[1]}", "lang": lg, "label": label,
                      "context": f"{s1}, {q}?", "choices": [f" {no}, {s2}", f" {yes}, {s2}"], "where": where})
    return items


def convert_xstorycloze(path: Path, lang: str | None = None) -> list[dict]:
    """XStoryCloze / StoryCloze rows: four sentences, two endings, AnswerRightEnding 1|2
    (original CamelCase headers or the snake_case of the HF copy)."""
    items = []
    for where, rec in _rows(path):
        lg = _row_lang(rec, where, path, lang)
        sents = [_get(rec, (f"InputSentence{i}", f"input_sentence_{i}"), where).strip() for i in range(1, 5)]
        ends = [_get(rec, (f"RandomFifthSentenceQuiz{i}", f"sentence_quiz{i}"), where).strip() for i in (1, 2)]
        answer = _get(rec, ("AnswerRightEnding", "answer_right_ending"), where)
        label = _label(answer, {}, 3, where) - 1
        if label not in (0, 1):
            raise BloomchatError(f"AnswerRightEnding {answer} out of range (1 or 2)", where=f"{where} field label")
        sep = "" if lg in NO_SPACE_LANGS else " "
        items.append({"id": f"xstorycloze-{lg}:{where.rsplit(':', 1)[1]}", "lang": lg, "label": label,
                      "context": sep.join(sents), "choices": [sep + e for e in ends], "where": where})
    return items


def _char_offsets(sentence: str, tokens: list[str]) -> list[tuple[int, int]] | None:
    spans, pos = [], 0
    for t in tokens:
        i = sentence.find(t, pos)
        if i < 0:
            return None
        spans.append((i, i + len(t)))
        pos = i + len(t)
    return spans


def _pronoun_span(sentence: str, tokens: list[str], pron: list, lang: str) -> tuple[int, int] | None:
    """Character span of the pronoun: by aligning the tokens before it with the sentence, or,
    when the tokens were normalised (PTB quotes ``, n't), as the k-th occurrence of the pronoun
    where k counts its occurrences among the tokens before it."""
    (start, end), text = pron[1], pron[0]
    spans = _char_offsets(sentence, tokens[:end])
    if spans is not None and 0 <= start < end <= len(spans):
        return spans[start][0], spans[end - 1][1]
    ptoks = list(pron[2]) if len(pron) > 2 and pron[2] else [text]
    k = sum(1 for i in range(start) if tokens[i:i + len(ptoks)] == ptoks)
    word = r"\b" if lang not in NO_SPACE_LANGS and text[:1].isalnum() else ""
    hits = [m.span() for m in re.finditer(word + re.escape(text) + word, sentence)]
    return hits[k] if k < len(hits) else None


def convert_xwinograd(path: Path, lang: str | None = None, form: str = "native") -> list[dict]:
    """The XWinograd release TSV (yandex-research/crosslingual_winograd dataset.tsv): 7 columns,
    no header: lang, source, ?, sentence, tokens, [pronoun, [start, end], ...], candidates
    [[text, [start, end], tokens, is_correct] ...]. Token spans are end-exclusive indices.

    Partial scoring (as lm-evaluation-harness): each candidate replaces the pronoun; the
    contexts differ (sentence up to the pronoun, with the candidate) and the continuation is
    the rest of the sentence. A pronoun at the very end falls back to whole-sentence scoring.

    form "lm-eval": lm-evaluation-harness's request instead (lm_eval 0.4.13,
    tasks/xwinograd/utils.py `doc_to_choice` / `doc_to_target`, and target_delimiter " " in
    api/task.py `construct_requests`): contexts `sentence[:idx] + option`, continuation
    `" " + sentence[idx + 1:].strip()` where idx is the pronoun's place ("_" in its copy); this
    inserts a space in Chinese and Japanese and drops the space-or-not of the original text."""
    items = []
    for line, row in read_table(path, delimiter="\t", header=False):
        where = f"{path}:{line}"
        if len(row) != 7:
            raise BloomchatError(f"{len(row)} columns, XWinograd has 7", where=where)
        lg = normalize_lang(row[0], f"{where} column 1 (lang)")
        sentence = row[3].rstrip()
        try:
            tokens = json.loads(row[4])
            pron = json.loads(row[5])
            cands = json.loads(row[6])
            (p_start, p_end) = pron[1]
            texts = [c[0] for c in cands]
            correct = [bool(c[3]) for c in cands]
        except (ValueError, TypeError, IndexError, KeyError) as e:
            raise BloomchatError(f"malformed JSON columns 5-7 ({e.__class__.__name__}: {e})", where=where) from None
        if sum(correct) != 1:
            raise BloomchatError(f"{sum(correct)} candidates marked correct, expected exactly 1", where=f"{where} column 7")
        span = _pronoun_span(sentence, tokens, pron, lg)
        if span is None:
            raise BloomchatError(f"cannot locate the pronoun {pron[0]!r} in the sentence", where=where)
        a, b = span
        before, after = sentence[:a], sentence[b:]
        if form == "lm-eval":
            ctx, choices = [before + t for t in texts], [" " + after.strip()] * len(texts)
        elif after.strip():
            ctx, choices = [before + t for t in texts], [after] * len(texts)
        else:
            ctx, choices = "", [before + t + after for t in texts]
        items.append({"id": f"xwinograd-{lg}:{line}", "lang": lg, "label": correct.index(True),
                      "context": ctx, "choices": choices, "where": where})
    return items


def detect_format(path: Path) -> str:
    if path.suffix == ".jsonl" or path.suffix == ".json":
        from bloomchat.eval.xcopa import looks_like_xcopa

        for _, rec in iter_jsonl(path):
            if isinstance(rec, dict) and "choices" in rec:
                return "jsonl"
            if looks_like_xcopa(rec):
                return "xcopa"
            if isinstance(rec, dict) and ("premise" in rec or "gold_label" in rec):
                return "xnli"
            if isinstance(rec, dict) and ("input_sentence_1" in rec or "InputSentence1" in rec):
                return "xstorycloze"
            if isinstance(rec, dict) and "sentence1" in rec:
                return "pawsx"
            break
    elif path.is_file():
        with path.open(encoding="utf-8") as f:
            head = f.readline()
        cols = head.rstrip("\n").split("\t")
        if len(cols) == 7 and lang_from_path_tokens(cols[0]) and cols[4].startswith("["):
            return "xwinograd"
        low = head.lower()
        if "gold_label" in low or "premise" in low:
            return "xnli"
        if "inputsentence1" in low or "input_sentence_1" in low:
            return "xstorycloze"
        if "sentence1" in low:
            return "pawsx"
    raise BloomchatError(f"cannot tell the multiple-choice layout; pass --format ({'|'.join(FORMATS)})",
                         where=str(path))


def _convert_xcopa(path: Path, lang: str | None = None, form: str = "native") -> list[dict]:
    from bloomchat.eval.xcopa import convert_xcopa

    return convert_xcopa(path, lang, form)


CONVERTERS = {"xnli": convert_xnli, "xwinograd": convert_xwinograd, "xstorycloze": convert_xstorycloze,
              "pawsx": convert_pawsx, "xcopa": _convert_xcopa}
#: Layouts with a second formulation (--mc-format lm-eval).
_FORMED = ("xwinograd", "xcopa")


def load_mc(path: str | Path, fmt: str = "auto", lang: str | None = None, form: str = "native") -> list[dict]:
    """Items of the documented form from any supported layout (a folder: every file in it)."""
    if form not in MC_FORMS:
        raise BloomchatError(f"unknown --mc-format {form!r}; use {' or '.join(MC_FORMS)}", where="--mc-format")
    p = existing(path)
    files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(("_", ".")) and
                   q.suffix.lower() in (".jsonl", ".json", ".tsv", ".csv")) if p.is_dir() else [p]
    items = []
    for f in files:
        kind = detect_format(f) if fmt == "auto" else fmt
        if kind == "jsonl":
            got = load_mc_jsonl(f)
        elif kind in _FORMED:
            got = CONVERTERS[kind](f, lang, form)
        elif kind in CONVERTERS:
            got = CONVERTERS[kind](f, lang)
        else:
            raise BloomchatError(f"unknown multiple-choice format {kind!r}; use {', '.join(FORMATS)}", where="--format")
        for it in got:  # converters build valid items; check them the same way anyway
            validate_item(it, it.get("where", str(f)))
        items.extend(got)
    return items


def write_mc_jsonl(items: Sequence[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({k: it[k] for k in ("id", "context", "choices", "label", "lang")},
                               ensure_ascii=False) + "\n")
    return out


# ------------------------------------------------------------------------------------- task
def predict(rec: dict, norm: str) -> int:
    lp = rec["logprobs"]
    denom = {"sum": [1] * len(lp), "mean": rec["ntokens"], "char": rec["nchars"], "byte": rec["nbytes"]}[norm]
    scores = [x / max(d, 1) for x, d in zip(lp, denom)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def mc_metrics(primary: str = "sum") -> list[Metric]:
    """Accuracy under each normalisation (the primary one first), and chance level."""
    order = [primary] + [n for n in NORMS if n != primary]
    return [mean_metric(f"acc_{nm}", lambda r, nm=nm: predict(r, nm) == r["label"], percent=True) for nm in order] + [
        mean_metric("chance", lambda r: 1.0 / len(r["logprobs"]), percent=True)]


@dataclass
class MCTask(EvalTask):
    data: str
    format: str = "auto"
    langs: list[str] | None = None
    lang: str | None = None  # language of files whose rows and names do not say
    limit: int | None = None  # per language
    norm: str = "sum"
    mc_format: str = "native"  # XWinograd/XCOPA: "lm-eval" builds lm-evaluation-harness's requests
    name: str = ""
    kind: str = "mc"
    generates = False  # scored by log-likelihood (HFBackend.loglik), no text generated

    def __post_init__(self):
        if self.norm not in NORMS:
            raise BloomchatError(f"unknown normalisation {self.norm!r}; use one of {', '.join(NORMS)}", where="--norm")
        if not self.name:
            self.name = f"mc-{Path(self.data).stem or Path(self.data).name}"
        self.chart_metrics = (f"acc_{self.norm}",)
        self._examples = None

    def examples(self) -> list[dict]:
        if self._examples is None:
            items = load_mc(self.data, self.format, self.lang, self.mc_format)
            self._examples = select_by_lang(items, langs=self.langs, limit=self.limit, where=self.data,
                                            what="multiple-choice examples")
        return self._examples

    def sort_key(self, ex: dict) -> int:
        ctx = ex["context"]
        return -(max(len(c) for c in ctx) if isinstance(ctx, list) else len(ctx)) - max(len(c) for c in ex["choices"])

    def run_batch(self, backend, batch: Sequence[dict]) -> list[dict]:
        pairs = []
        for ex in batch:
            ctx = ex["context"]
            for i, ch in enumerate(ex["choices"]):
                pairs.append((ctx[i] if isinstance(ctx, list) else ctx, ch))
        scores = backend.loglik(pairs)  # one forward pass for all options of the batch
        recs, k = [], 0
        for ex in batch:
            n = len(ex["choices"])
            got = scores[k: k + n]
            k += n
            rec = {"id": ex["id"], "group": ex["group"], "label": ex["label"],
                   "logprobs": [s for s, _ in got], "ntokens": [t for _, t in got],
                   "nchars": [len(c) for c in ex["choices"]], "nbytes": [len(c.encode("utf-8")) for c in ex["choices"]]}
            rec["pred"] = {nm: predict(rec, nm) for nm in NORMS}
            recs.append(rec)
        return recs

    def metrics(self, group: str) -> list[Metric]:
        return mc_metrics(self.norm)

    def config(self) -> dict:
        return {"task": self.kind, "data": str(Path(self.data).resolve()), "format": self.format,
                "langs": self.langs or "all", "lang": self.lang, "limit": self.limit, "primary_norm": self.norm,
                **({"mc_format": self.mc_format} if self.mc_format != "native" else {}),
                "norms": {"sum": "raw sum of log-probs", "mean": "per-token mean", "char": "sum / characters",
                          "byte": "sum / UTF-8 bytes"}}
