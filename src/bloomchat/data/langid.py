"""Language of a conversation, offline: py3langid (its model ships inside the package).

Why py3langid and not lingua-language-detector (both installed, both offline): measured on
1,060 short prompts with known language (LLM-Zoo 10 x 100 questions + OASST multilingual-60,
12 languages) and on real training sets (`python bench/bench_prepare.py --langid` re-measures):

| detector                         | prompts | <= 40 chars (214) | Dolly en | Alpaca zh | speed (Dolly conv/s) |
|----------------------------------|---------|-------------------|----------|-----------|----------------------|
| lingua 2.x, all languages        | 99.2 %  | 96.7 %            |          |           | ~450                 |
| py3langid 0.4, all 140 languages | 99.4 %  | 97.2 %            | 99.70 %  | 95.4 %    | ~4,600               |
| py3langid 0.4, DEFAULT_CANDIDATES| 99.6 %  | 98.1 %            | 99.92 %  | 98.2 %    | ~4,600               |

Same accuracy as lingua at ten times the speed, so tagging stays a small part of `prepare`
(OIG is millions of conversations). The full 140-language model confuses Chinese with Wu
(`wuu`, 2.8 % of Alpaca-zh) and English with Nigerian Pidgin / Bikol / Latin; restricting it to
DEFAULT_CANDIDATES (the 97 languages of the original langid.py model, less Latin and Volapük)
removes most of that. `candidates="all"` or any list of codes overrides it. Codes are ISO 639-1
("en", "zh", "fr", ...); "und" when a text has no letters. Only the first MAX_CHARS characters
are looked at: the language is settled long before, and the cost is linear in length.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from bloomchat import langs
from bloomchat.errors import BloomchatError

#: 500 characters ~ 100 English words. Measured (Dolly en / Alpaca zh / vigogne fr accuracy):
#: 2,000 chars 99.95 / 98.2 / 99.0 % at 3,100 Dolly conv/s of CPU; 500 chars the same accuracy at
#: 4,800/s; 300 chars loses French (98.5 %).
MAX_CHARS = 500
UNDETERMINED = langs.UNDETERMINED

#: langid.py's original 97 languages (Lui & Baldwin 2012) less la, vo (not chat languages), as
#: present in py3langid's model (nb: "no" and "nb" both stand for Norwegian Bokmål there).
DEFAULT_CANDIDATES: tuple[str, ...] = tuple(
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he hi hr "
    "ht hu hy id is it ja jv ka kk km kn ko ku ky lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn no oc or "
    "pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl ug uk ur vi wa xh zh zu".split()
)


def all_languages() -> list[str]:
    return langs.langid_languages()


def resolve_candidates(candidates: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """None/"default" -> DEFAULT_CANDIDATES, "all" -> every language of the model, else a checked list."""
    if candidates is None or candidates == "default":
        return DEFAULT_CANDIDATES
    if candidates == "all":
        return None
    if isinstance(candidates, str):
        candidates = [candidates]
    unknown = sorted(set(candidates) - set(all_languages()))
    if unknown:
        raise BloomchatError(f"language detector does not know {', '.join(unknown)} (it knows: {' '.join(all_languages())})")
    return tuple(candidates)


def detector_name() -> str:
    return langs.langid_name()


def detect(text: str, candidates: tuple[str, ...] | None = DEFAULT_CANDIDATES) -> str:
    """ISO 639-1 code of `text` ("und" when it has no letters)."""
    text = text[:MAX_CHARS]
    if not any(c.isalpha() for c in text):
        return UNDETERMINED
    return langs.identifier(candidates).classify(text)[0]


def conversation_text(texts: Iterable[str]) -> str:
    """What the detector reads of a conversation: its turn texts together, the first MAX_CHARS."""
    buf, n = [], 0
    for t in texts:
        buf.append(t)
        n += len(t) + 1
        if n >= MAX_CHARS:
            break
    return "\n".join(buf)[:MAX_CHARS]


def detect_turns(texts: Iterable[str], candidates: tuple[str, ...] | None = DEFAULT_CANDIDATES) -> str:
    """Language of a conversation from its turn texts."""
    return detect(conversation_text(texts), candidates)


def lang_matches(code: str | None, wanted: Iterable[str]) -> bool:
    """'pt-BR' matches 'pt' and 'pt-BR'; codes compare case-insensitively."""
    if not code:
        return False
    c = code.lower()
    base = c.split("-")[0].split("_")[0]
    return any(w.lower() in (c, base) for w in wanted)
