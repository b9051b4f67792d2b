"""Languages, one place for every stage: codes and names, the language a file's name gives, the
language-ID model, and the language lists of the public evaluation sets.

Codes are ISO 639-1 where one exists ("en", "zh", "pt"); every file layout names languages its
own way (jp, zho_Hans, "Chinese", zh-CN) and `lookup_lang` maps them all to one code, so data,
evaluation and arena group the same way. An unknown code is a user error (a typo such as
`--langs zn` would otherwise silently select nothing), raised as BloomchatError naming where
the code came from.

Language ID is py3langid (a dependency; its ~100 MB model ships inside the package, no
download): `identifier()` builds one per (candidates, norm_probs) and keeps it; `classify()` is
the shared one with probabilities, safe to call from the chat server's threads.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

from bloomchat.errors import BloomchatError

#: "und" (ISO 639-2 "undetermined"): a text with no letters, or no language known.
UNDETERMINED = "und"
#: Open-Assistant's multilingual-60 prompt set: 12 blocks of the same 5 prompts, in this order
#: (eval_prompts_oasst_multilingual60/SOURCE.md).
OASST_MULTILINGUAL60_LANGS: tuple[str, ...] = ("en", "es", "ru", "de", "fr", "uk", "it", "vi", "zh", "ko", "ja", "th")

#: Languages written without spaces between words: text in them is measured in characters.
NO_SPACE_LANGS: tuple[str, ...] = ("zh", "ja", "th", "my", "km", "lo")

#: ISO 639-1 code -> English name. BLOOM's 46 natural languages are all here (its Niger-Congo
#: and Indic languages included), plus the languages of the shared evaluation sets.
LANG_NAMES: dict[str, str] = {
    "af": "Afrikaans", "ak": "Akan", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bm": "Bambara", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto",
    "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fon": "Fon",
    "fr": "French", "ga": "Irish", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "ig": "Igbo",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh",
    "km": "Khmer", "kn": "Kannada", "ko": "Korean", "lg": "Luganda", "ln": "Lingala", "lt": "Lithuanian",
    "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay",
    "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian", "ny": "Chichewa", "or": "Odia",
    "pa": "Punjabi", "pl": "Polish", "pt": "Portuguese", "qu": "Quechua", "ro": "Romanian", "ru": "Russian", "rw": "Kinyarwanda",
    "sk": "Slovak", "sl": "Slovenian", "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian",
    "st": "Sesotho", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai",
    "tl": "Tagalog", "tn": "Setswana", "tr": "Turkish", "ts": "Xitsonga", "tw": "Twi", "uk": "Ukrainian",
    "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "wo": "Wolof", "xh": "Xhosa", "yo": "Yoruba",
    "zh": "Chinese", "zu": "Zulu",
}

#: Other spellings seen in evaluation layouts -> ISO 639-1.
_ALIASES: dict[str, str] = {
    "jp": "ja", "cn": "zh", "zh-cn": "zh", "zh-hans": "zh", "zh_cn": "zh", "zhs": "zh", "zh-tw": "zh",
    "zh-hant": "zh", "cmn": "zh", "deutsch": "de", "espanol": "es", "español": "es", "francais": "fr",
    "français": "fr", "chinese-simplified": "zh", "simplified chinese": "zh", "farsi": "fa",
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "zho": "zh", "chi": "zh",
    "jpn": "ja", "kor": "ko", "rus": "ru", "por": "pt", "ita": "it", "arb": "ar", "ara": "ar", "hin": "hi",
    "vie": "vi", "ind": "id", "swh": "sw", "swa": "sw", "ron": "ro", "rum": "ro", "tha": "th", "tur": "tr",
    "ukr": "uk", "urd": "ur", "ben": "bn", "tam": "ta", "tel": "te", "yor": "yo", "ibo": "ig", "eus": "eu",
    "cat": "ca", "nld": "nl", "pol": "pl", "ces": "cs", "ell": "el", "bul": "bg", "heb": "he", "pes": "fa",
    "mya": "my", "zsm": "ms", "msa": "ms",
}
_BY_NAME = {name.lower(): code for code, name in LANG_NAMES.items()}


def lookup_lang(code: str) -> str | None:
    """ISO 639-1 code for `code` (zh, ZH, jp, zho_Hans, zh-CN, Chinese), or None if unknown."""
    if not isinstance(code, str):
        return None
    c = code.strip().lower()
    if c in LANG_NAMES:
        return c
    if c in _ALIASES:
        return _ALIASES[c]
    if c in _BY_NAME:
        return _BY_NAME[c]
    # FLORES-200 style "zho_Hans", BCP-47 "pt-BR", "zh_Hant".
    head = re.split(r"[-_]", c, maxsplit=1)[0]
    if head != c:
        return lookup_lang(head)
    return None


def normalize_lang(code: str, where: str | None = None) -> str:
    """ISO 639-1 code for `code`; BloomchatError naming `where` when the code is unknown."""
    found = lookup_lang(code)
    if found is None:
        raise BloomchatError(f"unknown language code {code!r} (use an ISO 639-1 code such as en, zh, fr)",
                             where=where)
    return found


def parse_lang_list(text: str | None, where: str = "--langs") -> list[str] | None:
    """'en,zh, fr' -> ['en', 'zh', 'fr']; None/'' -> None (all languages)."""
    if not text:
        return None
    return [normalize_lang(t, where) for t in str(text).split(",") if t.strip()]


def lang_name(code: str) -> str:
    return LANG_NAMES.get(code, code)


def lang_from_path_tokens(*names: str) -> str | None:
    """A language code found in file/folder names: zh100 -> zh, questions_Chinese -> zh,
    BayLing-80.singleturn.zh -> zh. Tokens are tried in order; short English words that are
    also codes (it, is, no, as, or, to...) count only when they are the whole token group's
    last token, as in `eval_set_zh` or `question.it`."""
    ambiguous = {"it", "is", "no", "as", "or", "to", "be", "so", "am", "an", "in", "on", "my", "me", "he", "id"}
    for name in names:
        tokens = [t for t in re.split(r"[^A-Za-z]+", name) if t]
        for i, tok in enumerate(tokens):
            low = tok.lower()
            if low in ambiguous and i != len(tokens) - 1:
                continue
            if len(low) == 2 or low in _BY_NAME or low in _ALIASES:
                found = lookup_lang(low)
                if found:
                    return found
    return None


def lang_from_path(path) -> str | None:
    """The language a file's name gives: any token of the file name (zh100.jsonl,
    questions_Chinese.jsonl, test.de.jsonl), else the last token of its folder's name
    (x-final/de/test_2k.tsv, belle_eval_set_zh/eval_set.json). Other folder tokens are not
    trusted: folder names are full of accidental codes (tmp_ta0, my_data)."""
    p = Path(path)
    found = lang_from_path_tokens(p.stem)
    if found:
        return found
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", p.parent.name) if t]
    return lang_from_path_tokens(tokens[-1]) if tokens and tokens[-1].isalpha() else None


def lang_of_aligned_file(path) -> str | None:
    """The language of one side of a parallel corpus, named by the last dot-separated part of the
    file name that is a language (devtest.en.txt, eng_Latn.devtest, newstest22.en-de.de -> de: the
    pair names both sides, the suffix this file's), split and file words skipped."""
    for part in reversed(Path(path).name.split(".")):
        if part.lower() in ("txt", "devtest", "dev", "test", "src", "ref"):
            continue
        found = lookup_lang(part)
        if found:
            return found
    return None


# ------------------------------------------------------------------------------- language ID


@lru_cache(maxsize=8)
def identifier(candidates: tuple[str, ...] | None = None, norm_probs: bool = False):
    """py3langid's LanguageIdentifier, restricted to `candidates` (None: all its 140 languages);
    `norm_probs` makes `classify` return a probability in [0, 1] instead of a log score."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=norm_probs)
    if candidates is not None:
        known = set(ident.nb_classes)
        ident.set_languages([c for c in candidates if c in known])
    return ident


def langid_languages() -> list[str]:
    """Every code py3langid's model can answer."""
    return sorted(set(identifier().nb_classes))


def langid_name() -> str:
    """"py3langid <version>", recorded in summaries so that a re-run can be compared."""
    from importlib.metadata import version

    return f"py3langid {version('py3langid')}"


#: py3langid's codes for varieties that bloomchat groups under another code.
LANGID_VARIETIES: dict[str, str] = {"yue": "zh", "wuu": "zh", "nn": "no", "uzs": "uz"}
_classify_lock = threading.Lock()


def classify(text: str, *, fold_varieties: bool = False) -> tuple[str, float]:
    """(code, probability in [0, 1]) of `text` by py3langid over all its languages; fold_varieties
    maps LANGID_VARIETIES (Cantonese is counted as Chinese). One model shared by every thread."""
    with _classify_lock:
        code, prob = identifier(None, True).classify(text)
    if fold_varieties:
        code = LANGID_VARIETIES.get(code, code)
    return code, float(prob)
