"""XCOPA (cambridgeltl/xcopa) as multiple choice: the premise, a cause/effect connective in the
item's language, then each alternative as the continuation.

Two formulations (`--mc-format`):
    native   premise without its final full stop + connective + alternative (first letter lower
             case), joined with a space except in scripts written without spaces (zh, ja); the
             premise keeps its last character when that is a letter (Thai and Tamil premises end
             without a full stop).
    lm-eval  exactly lm-evaluation-harness's request (lm_eval 0.4.13, tasks/xcopa/utils.py
             `doc_to_text`, `doc_to_choice`, and the task's target_delimiter " " added in
             api/task.py `construct_requests`): context `premise.strip()[:-1] + " " + connective`,
             continuation `" " + alternative with its first character lower-cased`. Its [:-1]
             drops the premise's last character whatever it is, a letter of every Thai and
             most Tamil premises included, and it puts spaces into Chinese: use it only to
             compare with published lm-eval tables.
"""

from __future__ import annotations

from pathlib import Path

from bloomchat.errors import BloomchatError
from bloomchat.langs import lang_from_path, normalize_lang
from bloomchat.eval.readers import iter_jsonl

#: (cause, effect) connective per language: the words of lm-evaluation-harness's
#: tasks/xcopa/utils.py (`doc_to_text_<lang>` partials, lm_eval 0.4.13), so that the prompts are
#: the ones published XCOPA numbers used.
XCOPA_CONNECTIVES: dict[str, tuple[str, str]] = {
    "et": ("sest", "seetõttu"), "ht": ("poukisa", "donk sa"), "it": ("perché", "quindi"),
    "id": ("karena", "maka"), "qu": ("imataq", "chaymi"), "sw": ("kwa sababu", "kwa hiyo"),
    "zh": ("因为", "所以"), "ta": ("காரணமாக", "எனவே"), "th": ("เพราะ", "ดังนั้น"),
    "tr": ("çünkü", "bu yüzden"), "vi": ("bởi vì", "vì vậy"),
    "en": ("because", "therefore"),  # COPA's own words, for an English file in the same layout
}
MC_FORMS = ("native", "lm-eval")
_NO_SPACE = ("zh", "ja")
_FULL_STOPS = ".。．!?！？"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def xcopa_request(premise: str, choice: str, question: str, lang: str, form: str = "native") -> tuple[str, str]:
    """(context, continuation) of one alternative."""
    cause, effect = XCOPA_CONNECTIVES[lang]
    conn = {"cause": cause, "effect": effect}[question]
    if form == "lm-eval":
        return premise.strip()[:-1] + " " + conn, " " + _lower_first(choice)
    sep = "" if lang in _NO_SPACE else " "
    p = premise.strip()
    if p and p[-1] in _FULL_STOPS:
        p = p[:-1].rstrip()
    return p + sep + conn, sep + _lower_first(choice.strip())


def convert_xcopa(path: Path, lang: str | None = None, form: str = "native") -> list[dict]:
    """Rows {premise, choice1, choice2, question: cause|effect, label 0|1, idx} of
    {val,test}.<lang>.jsonl; the language from a `lang` field, --lang or the file name."""
    if form not in MC_FORMS:
        raise BloomchatError(f"unknown --mc-format {form!r}; use {' or '.join(MC_FORMS)}", where="--mc-format")
    items = []
    file_lang = lang or lang_from_path(path)
    for line, rec in iter_jsonl(path):
        where = f"{path}:{line}"
        if not isinstance(rec, dict):
            raise BloomchatError("each line must be a JSON object", where=where)
        lg = normalize_lang(rec["lang"], f"{where} field lang") if rec.get("lang") else file_lang
        if not lg:
            raise BloomchatError("no language: rows have no 'lang' and the file name names none; pass --lang",
                                 where=str(path))
        if lg not in XCOPA_CONNECTIVES:
            raise BloomchatError(f"no XCOPA connectives for language {lg} (have {', '.join(sorted(XCOPA_CONNECTIVES))})",
                                 where=where)
        for k in ("premise", "choice1", "choice2", "question", "label"):
            if k not in rec:
                raise BloomchatError(f"missing field {k!r}", where=where)
        if rec["question"] not in ("cause", "effect"):
            raise BloomchatError(f"question must be cause or effect, not {rec['question']!r}", where=f"{where} field question")
        label = rec["label"]
        if label not in (0, 1) or isinstance(label, bool):
            raise BloomchatError(f"label must be 0 or 1, not {label!r}", where=f"{where} field label")
        reqs = [xcopa_request(rec["premise"], rec[c], rec["question"], lg, form) for c in ("choice1", "choice2")]
        idx = rec.get("idx", line)
        items.append({"id": f"xcopa-{lg}:{path.stem.split('.')[0]}:{idx}", "lang": lg, "label": label,
                      "context": reqs[0][0], "choices": [c for _, c in reqs], "where": where})
    return items


def looks_like_xcopa(rec) -> bool:
    return isinstance(rec, dict) and "premise" in rec and "choice1" in rec and "question" in rec
