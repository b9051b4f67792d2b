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
