"""Chat behaviour on multilingual prompt sets: does the model answer in the prompt's language,
does it degenerate into repetition, how long are its replies.

Definitions (per reply; an example's value is the mean over its turns):
    in_lang     the reply's language, by py3langid (its model ships inside the package), equals
                the prompt's language. yue/wuu count as zh. An empty reply is not in language.
    rep4        share of the reply's 4-grams that repeat an earlier 4-gram of the same reply,
                1 - distinct/total, over words, or over characters for zh/ja/th/my (no spaces).
                A reply with fewer than 4 units has rep4 0.
    degenerate  rep4 > 0.5: more than half of the reply is loops of text already written.
    chars       reply length in characters; new_tokens: generated tokens (when the backend says).
    hit_limit   generation stopped by max_new_tokens rather than by EOS (often a loop).

Decoding: BLOOMChat's served settings by default (temperature 0.8, top_p 0.9, repetition
penalty 1.2, 512 new tokens), measured as users meet the model, through the engine that serves
it (bloomchat.infer); --greedy for argmax. Each chat samples with its own seed, from its content
and --seed (a chat samples alike in any batch and in a resumed run; --greedy is exact).
Guards (--guards off|on|both): replies without / with bloomchat.infer's guards (language
resampling, loop cut, moderation); with both, the two arms share engine and per-chat seeds, so
the paired differences reported are what the guards change.

Prompt-set layouts (`--format`, detected per file; a folder means every .jsonl/.json in it):
    jsonl       objects with the prompt in "text" | "query" | "question" | "prompt" | "instruction"
                (a list = several user turns, as BayLing-80 multiturn) or "turns" (MT-bench);
                category from "category" | "label" | "class"; language from "lang", else the
                file or folder name (zh100.jsonl, questions_Chinese.jsonl, belle_eval_set_zh),
                else --lang. Covers Vicuna-80 x 12 languages, LLMZoo, BayLing-80, ja-Vicuna, BELLE.
    oasst60     Open-Assistant multilingual-60: 60 bare JSON strings, blocks of 5 prompts in
                en, es, ru, de, fr, uk, it, vi, zh, ko, ja, th.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bloomchat.errors import BloomchatError
from bloomchat.eval.backends import BLOOMCHAT_SAMPLING, GenParams
from bloomchat.eval.metrics import Metric, mean_metric
from bloomchat.eval.readers import existing, iter_jsonl
from bloomchat.eval.task import EvalTask, select_by_lang
from bloomchat.langs import NO_SPACE_LANGS, OASST_MULTILINGUAL60_LANGS, classify, lang_from_path, normalize_lang

_TEXT_KEYS = ("text", "query", "question", "prompt", "instruction", "turns")
_CAT_KEYS = ("category", "label", "class")
#: 4-grams: a natural 200-word reply repeats well under 5% of them (set phrases), while a loop of
#: period p repeats all but the first p of them, so the two regimes are far apart.
REP_N = 4
#: More than half of the 4-grams repeated = at least half the reply is copies of earlier text.
DEGENERATE_THRESHOLD = 0.5


# ------------------------------------------------------------------------------- measures
def detect_lang(text: str) -> tuple[str | None, float]:
    """(ISO code, probability) of a reply's language by py3langid; (None, 0) for empty text."""
    if not text.strip():
        return None, 0.0
    return classify(text, fold_varieties=True)


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\u0e00-\u0e7f]")


def text_units(text: str, lang: str | None = None) -> list[str]:
    """Words, or characters (without spaces) for languages written without spaces."""
    stripped = re.sub(r"\s+", "", text)
    if lang in NO_SPACE_LANGS or (stripped and len(_CJK.findall(stripped)) / len(stripped) > 0.3):
        return list(stripped)
    return text.split()


def repeated_ngram_ratio(units: Sequence[str], n: int = REP_N) -> float:
    """1 - distinct n-grams / n-grams: 0 for no repetition, -> 1 for a loop."""
    total = len(units) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(units[i: i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


# -------------------------------------------------------------------------------- loaders
def _file_lang(path: Path, lang: str | None) -> str | None:
    return lang or lang_from_path(path)


def _load_oasst60(path: Path) -> list[dict]:
    rows = list(iter_jsonl(path))
    if len(rows) != 60:
        raise BloomchatError(f"the oasst60 layout has 60 lines (12 languages x 5), this file has {len(rows)}",
                             where=str(path))
    out = []
    for k, (line, text) in enumerate(rows):
        if not isinstance(text, str) or not text.strip():
            raise BloomchatError("expected a non-empty JSON string", where=f"{path}:{line}")
        lang = OASST_MULTILINGUAL60_LANGS[k // 5]
        out.append({"id": f"{path.stem}:{line}", "lang": lang, "turns": [text], "category": f"prompt{k % 5 + 1}",
                    "set": path.stem, "where": f"{path}:{line}"})
    return out


def _load_jsonl_prompts(path: Path, lang: str | None) -> list[dict]:
    file_lang = _file_lang(path, lang)
    out = []
    for line, rec in iter_jsonl(path):
        where = f"{path}:{line}"
        if not isinstance(rec, dict):
            raise BloomchatError("each line must be a JSON object with the prompt text", where=where)
        key = next((k for k in _TEXT_KEYS if k in rec), None)
        if key is None:
            raise BloomchatError(f"no prompt field (one of {', '.join(_TEXT_KEYS)})", where=where)
        turns = rec[key] if isinstance(rec[key], list) else [rec[key]]
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise BloomchatError(f"field {key!r} must be a non-empty string or list of strings", where=f"{where} field {key}")
        if rec.get("lang") is not None:
            lg = normalize_lang(rec["lang"], f"{where} field lang")
        elif file_lang:
            lg = file_lang
        else:
            raise BloomchatError("no language: records have no 'lang' and the file name names none; pass --lang",
                                 where=str(path))
        qid = rec.get("question_id", rec.get("id", line))
        cat = next((str(rec[k]).replace("\u00a0", " ") for k in _CAT_KEYS if rec.get(k) is not None), None)
        out.append({"id": f"{path.stem}:{qid}", "lang": lg, "turns": turns, "category": cat, "set": path.stem,
                    "where": where})
    return out


def detect_prompt_format(path: Path) -> str:
    for _, rec in iter_jsonl(path):
        return "oasst60" if isinstance(rec, str) else "jsonl"
    raise BloomchatError("empty prompt file", where=str(path))


def load_prompts(path: str | Path, fmt: str = "auto", lang: str | None = None) -> list[dict]:
    p = existing(path)
    files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix in (".jsonl", ".json")) if p.is_dir() else [p]
    if not files:
        raise BloomchatError("no .jsonl/.json prompt files in this folder", where=str(p))
    out = []
    for f in files:
        kind = detect_prompt_format(f) if fmt == "auto" else fmt
        if kind == "oasst60":
            out.extend(_load_oasst60(f))
        elif kind == "jsonl":
            out.extend(_load_jsonl_prompts(f, lang))
        else:
            raise BloomchatError(f"unknown prompt-set format {kind!r}; use jsonl or oasst60", where="--format")
    return out


def chat_metrics() -> list[Metric]:
    """Per-example means over turns of the per-reply measures defined in the module docstring."""
    def avg(key):
        return lambda r: sum(float(t[key]) for t in r["turns"]) / len(r["turns"])

    def tokens(r):
        vals = [t["new_tokens"] for t in r["turns"] if t["new_tokens"] is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    return [mean_metric("in_lang", avg("in_lang"), percent=True),
            mean_metric("degenerate", avg("degenerate"), percent=True, higher_is_better=False),
            mean_metric("rep4", avg("rep4"), percent=True, higher_is_better=False),
            mean_metric("empty", avg("empty"), percent=True, higher_is_better=False),
            mean_metric("hit_limit", avg("hit_limit"), percent=True, higher_is_better=False),
            mean_metric("chars", avg("chars"), higher_is_better=None),
            mean_metric("new_tokens", tokens, higher_is_better=None)]


# ------------------------------------------------------------------------------------- task
@dataclass
class ChatTask(EvalTask):
    data: str
    format: str = "auto"
    langs: list[str] | None = None
    lang: str | None = None
    limit: int | None = None  # per language
    params: GenParams = field(default_factory=lambda: BLOOMCHAT_SAMPLING)
    degenerate_threshold: float = DEGENERATE_THRESHOLD
    #: None: the backend's generate, no guards. "off"/"on": without/with bloomchat.infer's guards
    #: (language resampling, loop cut, moderation); over a local model all three use infer's engine.
    guards: str | None = None
    name: str = ""
    kind: str = "chat"
    chart_metrics = ("in_lang", "degenerate", "chars")

    def __post_init__(self):
        if self.guards not in (None, "off", "on"):
            raise BloomchatError(f"guards must be off or on, not {self.guards!r}", where="--guards")
        if not self.name:
            self.name = f"chat-{Path(self.data).stem or Path(self.data).name}"
            if self.guards:
                self.name += f".guards-{self.guards}"
        self._examples = None
        self._gen = None

    def _generator(self, backend):
        if self.guards is None:
            return backend
        if self._gen is None or self._gen.base is not backend:
            from bloomchat.eval.backends import InferGeneration

            self._gen = InferGeneration(backend, guards=self.guards == "on")
        return self._gen

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def examples(self) -> list[dict]:
        if self._examples is None:
            items = load_prompts(self.data, self.format, self.lang)
            self._examples = select_by_lang(items, langs=self.langs, limit=self.limit, where=self.data,
                                            what="prompts")
        return self._examples

    def sort_key(self, ex: dict) -> int:
        return -sum(len(t) for t in ex["turns"])

    def run_batch(self, backend, batch: Sequence[dict]) -> list[dict]:
        """Turn by turn: every example's turn t in one batch, its reply kept as history."""
        history = [[] for _ in batch]
        results = [[] for _ in batch]
        for t in range(max(len(ex["turns"]) for ex in batch)):
            idx = [i for i, ex in enumerate(batch) if t < len(ex["turns"])]
            chats = [history[i] + [{"role": "user", "content": batch[i]["turns"][t]}] for i in idx]
            replies = self._generator(backend).generate(chats, self.params)
            for i, chat, r in zip(idx, chats, replies):
                history[i] = chat + [{"role": "assistant", "content": r.text}]
                results[i].append(self.measure(batch[i]["turns"][t], r, batch[i]["lang"]))
        return [{"id": ex["id"], "group": ex["group"], "category": ex.get("category"), "set": ex.get("set"),
                 "turns": res} for ex, res in zip(batch, results)]

    def measure(self, prompt: str, reply, lang: str) -> dict:
        rl, prob = detect_lang(reply.text)
        rep = repeated_ngram_ratio(text_units(reply.text, lang))
        out = {"prompt": prompt, "reply": reply.text, "reply_lang": rl, "lang_prob": round(prob, 4),
               "in_lang": rl == lang, "rep4": round(rep, 4), "degenerate": rep > self.degenerate_threshold,
               "chars": len(reply.text), "new_tokens": reply.new_tokens, "hit_limit": reply.hit_limit,
               "empty": not reply.text.strip()}
        if reply.guard_events is not None:
            out["guard_events"] = reply.guard_events
            out["finish_reason"] = reply.finish_reason
        return out

    def metrics(self, group: str) -> list[Metric]:
        return chat_metrics()

    def extra_summary(self, records: Sequence[dict]) -> dict:
        """Which languages the off-language replies were in, per prompt language."""
        confusion: dict[str, dict[str, int]] = {}
        for r in records:
            for t in r["turns"]:
                if not t["in_lang"]:
                    row = confusion.setdefault(r["group"], {})
                    key = t["reply_lang"] or "(empty)"
                    row[key] = row.get(key, 0) + 1
        out = {"off_language_replies": confusion}
        if self.guards == "on":
            counts: dict[str, int] = {}
            for r in records:
                for t in r["turns"]:
                    for k, v in (t.get("guard_events") or {}).items():
                        counts[k] = counts.get(k, 0) + v
            out["guard_events"] = counts
        return out

    def config(self) -> dict:
        return {"task": self.kind, "data": str(Path(self.data).resolve()), "format": self.format,
                "langs": self.langs or "all", "lang": self.lang, "limit": self.limit,
                "generation": self.params.to_dict(), "language_id": "py3langid (norm_probs), yue/wuu->zh",
                "repetition": f"rep{REP_N} = 1 - distinct/total {REP_N}-grams (chars for zh/ja/th), "
                              f"degenerate if > {self.degenerate_threshold}",
                "guards": self.guards or "none",
                "engine": "backend" if self.guards is None else "bloomchat.infer"}


#: What the guards are meant to move, compared per language by paired bootstrap.
GUARD_METRICS = ("in_lang", "degenerate", "rep4", "empty", "hit_limit", "chars")


def guards_effect(task: ChatTask, off_records: Sequence[dict], on_records: Sequence[dict], *,
                  bootstrap: int, seed: int = 0) -> dict:
    """{lang: {metric: {"delta", "ci95", "n", "p_not_better"}}}: guards on minus off, same prompts."""
    from bloomchat.eval.metrics import paired_delta

    on_by = {r["id"]: r for r in on_records}
    pairs = [(a, on_by[a["id"]]) for a in off_records if a["id"] in on_by]
    groups: dict[str, list] = {}
    for a, b in pairs:
        groups.setdefault(a["group"], []).append((a, b))
    if len(groups) > 1:
        groups["all"] = pairs
    metrics = {m.name: m for m in task.metrics("all")}
    return {g: {name: paired_delta(metrics[name], [a for a, _ in ps], [b for _, b in ps], bootstrap=bootstrap, seed=seed)
                for name in GUARD_METRICS} for g, ps in groups.items()}
