"""bloomchat.langs: one language table, one file-name rule, one language-ID set-up for every stage."""

from __future__ import annotations

import py3langid
import pytest

from bloomchat import langs
from bloomchat.errors import BloomchatError


def test_codes_names_and_aliases():
    assert [langs.lookup_lang(c) for c in ("zh", "ZH", "jp", "zho_Hans", "zh-CN", "Chinese", "pt-BR", "deutsch")] == [
        "zh", "zh", "ja", "zh", "zh", "zh", "pt", "de"]
    assert langs.lookup_lang("zn") is None
    with pytest.raises(BloomchatError, match="unknown language code 'zn'"):
        langs.normalize_lang("zn", "--langs")
    assert langs.lang_name("sw") == "Swahili" and langs.lang_name("qq") == "qq"


@pytest.mark.parametrize("path, code", [
    ("eval_prompts_vicuna80_12lang/questions_Chinese.jsonl", "zh"),  # the arena's layouts
    ("eval_prompts_llmzoo_multilingual/zh100.jsonl", "zh"),
    ("questions-ja.jsonl", "ja"),
    ("test.de.jsonl", "de"),
    ("belle_eval_set_zh/eval_set.json", "zh"),  # the folder's last token
    ("tmp_ta0/prompts.jsonl", None),  # an accidental code inside a folder name is not trusted
    ("my_prompts.jsonl", None),  # "my" is an English word before another token
])
def test_lang_from_path(path, code):
    assert langs.lang_from_path(path) == code


def test_identifier_is_py3langids_model():
    texts = ["Bonjour, comment allez-vous ?", "请介绍一下北京。", "¿Dónde está la biblioteca?", "Guten Morgen!"]
    # the same answers as py3langid's own module-level classifier (all 140 languages)
    assert [langs.identifier().classify(t)[0] for t in texts] == [py3langid.classify(t)[0] for t in texts]
    code, p = langs.identifier(norm_probs=True).classify(texts[0])
    assert code == "fr" and 0.5 < p <= 1.0
    only = langs.identifier(("en", "de"))
    assert only.classify(texts[0])[0] in ("en", "de")  # restricted to the candidates
    assert langs.identifier().classify(texts[0])[0] == "fr"  # the shared one is not restricted by that
    assert len(langs.langid_languages()) == 140


def test_oasst_multilingual60_order():
    assert langs.OASST_MULTILINGUAL60_LANGS == ("en", "es", "ru", "de", "fr", "uk", "it", "vi", "zh", "ko", "ja", "th")


def test_classify_is_the_shared_identifier_with_probabilities_and_folds_varieties():
    text = "Bonjour, comment allez-vous aujourd'hui ?"
    code, p = langs.classify(text)
    assert code == "fr" and 0.5 < p <= 1.0 and isinstance(p, float)
    cantonese = "佢哋喺度做緊乜嘢呀？我唔知道佢哋去咗邊度。"
    raw = langs.classify(cantonese)[0]
    assert raw == "yue"  # py3langid's own code ...
    assert langs.classify(cantonese, fold_varieties=True)[0] == "zh"  # ... grouped with Chinese


@pytest.mark.parametrize("name, code", [
    ("devtest.en.txt", "en"),  # FLORES-101 as stored in shared/data
    ("eng_Latn.devtest", "en"),  # FLORES-200
    ("newstest22.en-de.de", "de"),  # WMT: the suffix is this side's language, not the pair's first
    ("newstest22.de-en.en", "en"),
    ("README.txt", None),
])
def test_lang_of_aligned_file(name, code):
    assert langs.lang_of_aligned_file(f"flores/{name}") == code


def test_no_other_module_sets_up_language_id_or_its_own_language_table():
    import ast
    from pathlib import Path

    import bloomchat

    src = Path(bloomchat.__file__).parent
    for f in src.rglob("*.py"):
        if f.name == "langs.py" and f.parent == src:
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] in ("py3langid", "langid", "lingua") for m in mods), f"{f}: use bloomchat.langs"
        for n in ast.walk(tree):  # a dict of language names (two or more) is a second table
            if isinstance(n, ast.Dict):
                values = [v.value for v in n.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
                names = [v for v in values if v in set(langs.LANG_NAMES.values())]
                assert len(names) < 2, f"{f}:{n.lineno}: language names belong in bloomchat.langs.LANG_NAMES"
