"""Eval's local generation is bloomchat.infer's: the same prompt ids as ChatModel, transformers'
greedy tokens, per-chat seeds, the left cut of long prompts, and a resume key naming the path."""

from __future__ import annotations

import json

import pytest
import torch

from bloomchat.errors import BloomchatError
from bloomchat.eval.backends import (GENERATION, STOP_STRINGS, GenParams, HFBackend, InferGeneration, chat_seed,
                                     cut_reply)
from bloomchat.eval.cache import ExampleCache
from bloomchat.eval.runner import cache_key
from varied_model import save_varied_model

CHATS = [
    [{"role": "user", "content": "Hello, how are you?"}],
    [{"role": "user", "content": "你好，请介绍一下北京。"}, {"role": "assistant", "content": "北京是首都。"},
     {"role": "user", "content": "还有呢？"}],
    [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Très bien"},
     {"role": "user", "content": "¿Dónde está la biblioteca?"}],
]
SAMPLED = GenParams(max_new_tokens=10, temperature=0.8, top_p=0.9, repetition_penalty=1.2, seed=3)


@pytest.fixture(scope="module")
def model_dir(micro_model_dir, tmp_path_factory):
    """The micro BLOOM with larger random weights (varied_model.save_varied_model)."""
    return save_varied_model(micro_model_dir, tmp_path_factory.mktemp("varied_model"))


@pytest.fixture(scope="module")
def backend(model_dir):
    b = HFBackend(str(model_dir))
    yield b
    b.close()


def _hf_generate(model, tok, ids, n, eos, penalty=1.0):
    """transformers' greedy on these prompt ids, as a Reply would report it."""
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, repetition_penalty=penalty, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id, stop_strings=list(STOP_STRINGS), tokenizer=tok)
    new = out[0, len(ids):].tolist()
    ended = bool(new) and new[-1] == eos
    raw = tok.decode(new[:-1] if ended else new, skip_special_tokens=True)
    stopped = ended or any(s in raw for s in STOP_STRINGS)
    return {"text": cut_reply(raw), "new_tokens": len(new), "hit_limit": not stopped}


def _as_dict(r):
    return {"text": r.text, "new_tokens": r.new_tokens, "hit_limit": r.hit_limit}


def test_prompt_carries_eos_after_the_earlier_reply_as_in_training(backend):
    """The multi-turn prompts carry EOS after the earlier bot reply, as the packer wrote it for
    training; the chat template renders that EOS, so its string tokenises to the same ids."""
    cm = backend.chat_model()
    tok = cm.tokenizer
    for chat in CHATS[1:]:
        ids = cm.prompt_ids(chat)
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert ids.count(cm.eos_ids[0]) == 1
        reply = tok(" " + chat[-2]["content"], add_special_tokens=False)["input_ids"]
        i = ids.index(cm.eos_ids[0])
        assert ids[i - len(reply):i] == reply


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_greedy_equals_transformers_generate_on_chat_model_prompt_ids(backend, penalty):
    cm = backend.chat_model()
    params = GenParams(max_new_tokens=9, repetition_penalty=penalty)
    got = backend.generate(CHATS, params)
    for chat, r in zip(CHATS, got):
        want = _hf_generate(cm.model, cm.tokenizer, cm.prompt_ids(chat), 9, cm.eos_ids[0], penalty)
        assert _as_dict(r) == want
        assert r.finish_reason == ("length" if r.hit_limit else "stop")
    assert len({r.text for r in got}) == len(CHATS)
    assert backend.generate(CHATS, params) == got  # deterministic


def test_stop_by_eos_and_by_limit_give_the_right_counts(model_dir):
    """EOS is made a token greedy decoding reaches (a random model never picks the real one), so
    replies stop early: new_tokens counts the generated tokens, EOS included; hit_limit is False."""
    from bloomchat.models import load_model, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), dtype="float32", device="cpu").eval()
    plain = HFBackend.from_loaded(model, tok)
    first = plain.chat_model()
    one_turn = [{"role": "user", "content": "Bonjour"}]  # no earlier reply: its prompt has no EOS in it
    ids = first.prompt_ids(one_turn)
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                            pad_token_id=tok.pad_token_id, eos_token_id=first.eos_ids)[0, len(ids):].tolist()
    plain.close()
    k = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])  # first reached at step k
    fake_eos = greedy[k]
    model.generation_config.eos_token_id = fake_eos
    b = HFBackend.from_loaded(model, tok)
    try:
        cm = b.chat_model()
        assert cm.eos_ids == [fake_eos]
        chats = CHATS + [one_turn]
        got = b.generate(chats, GenParams(max_new_tokens=12))
        wants = [_hf_generate(model, tok, cm.prompt_ids(c), 12, fake_eos) for c in chats]
        assert [_as_dict(r) for r in got] == wants
        first_reply = got[-1]
        assert not first_reply.hit_limit and first_reply.finish_reason == "stop"
        assert first_reply.new_tokens == k + 1  # k tokens, then EOS
        one = b.generate([one_turn], GenParams(max_new_tokens=k))[0]  # cut just before the EOS
        assert one.hit_limit and one.new_tokens == k and one.finish_reason == "length"
    finally:
        b.close()


def test_sampled_replies_are_chat_models_with_a_seed_per_chat(backend, model_dir):
    from bloomchat.infer import load_chat_model

    got = backend.generate(CHATS, SAMPLED)
    other = load_chat_model(model_dir)  # a separate engine: same ids + same seed = same reply
    try:
        for chat, r in zip(CHATS, got):
            gp = SAMPLED.for_chat(chat)
            assert gp.seed == chat_seed(chat, 3) and gp.temperature == 0.8 and gp.stop == STOP_STRINGS
            assert r.text == cut_reply(other.reply(chat, gp))
    finally:
        other.close()
    # a chat samples alike whatever batch it is in (a resumed run re-forms batches)
    again = backend.generate([CHATS[2], CHATS[0]], SAMPLED) + backend.generate([CHATS[1]], SAMPLED)
    assert [r.text for r in again] == [got[2].text, got[0].text, got[1].text]
    assert len({chat_seed(c, 3) for c in CHATS}) == len(CHATS)  # different chats, different noise
    reseeded = backend.generate(CHATS, GenParams(**{**SAMPLED.to_dict(), "seed": 4}))
    assert [r.text for r in reseeded] != [r.text for r in got]


def test_long_prompts_are_cut_from_the_left(model_dir):
    b = HFBackend(str(model_dir), max_length=24)
    try:
        cm = b.chat_model()
        long_chat = [{"role": "user", "content": "Tell me a long story about a cat and a dog " * 6}]
        ids = cm.prompt_ids(long_chat)
        assert len(ids) > 24
        (r,) = b.generate([long_chat], GenParams(max_new_tokens=8))
        assert _as_dict(r) == _hf_generate(cm.model, cm.tokenizer, ids[-16:], 8, cm.eos_ids[0])  # 24 - 8 kept
        # the guarded path keeps the same rule instead of refusing the prompt
        (g,) = InferGeneration(b, guards=True).generate([long_chat], GenParams(max_new_tokens=8))
        assert g.guard_events is not None
        with pytest.raises(BloomchatError, match="leaves no room"):
            b.generate([long_chat], GenParams(max_new_tokens=24))
    finally:
        b.close()


def test_guards_off_arm_is_the_plain_path(backend):
    off = InferGeneration(backend, guards=False).generate(CHATS, SAMPLED)
    assert off == backend.generate(CHATS, SAMPLED)
    assert all(r.guard_events is None for r in off)


def test_params_are_checked_by_infers_generation_params():
    assert GenParams(temperature=0.7, top_p=0.5).validate() == GenParams(temperature=0.7, top_p=0.5)
    with pytest.raises(BloomchatError, match="top_p"):
        GenParams(top_p=0).validate("spec.yaml tasks[0]")
    with pytest.raises(BloomchatError, match="max_new_tokens"):
        GenParams(max_new_tokens=0).validate()
    with pytest.raises(BloomchatError, match="seed"):
        GenParams(seed="1").validate()
    assert GenParams().for_chat(CHATS[0]).top_p == 1.0  # greedy: no nucleus


def test_resume_key_keeps_old_path_results_out(backend, tmp_path):
    from bloomchat.eval.mc import MCTask
    from bloomchat.eval.translation import TranslationTask

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"src": "Hello.", "ref": "Bonjour.", "src_lang": "en", "tgt_lang": "fr"}) + "\n",
                     encoding="utf-8")
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"id": "1", "context": "The sky is", "choices": [" blue", " green"], "label": 0,
                              "lang": "en"}) + "\n", encoding="utf-8")
    old_model = {k: v for k, v in backend.describe().items() if k not in ("device", "generation", "seeds")}
    tr, mct = TranslationTask(str(pairs)), MCTask(str(mc))
    for task in (tr, mct):  # run dirs as the old generate() path left them, with an example made
        ExampleCache(tmp_path / "run", task.name, {"task": task.config(), "model": old_model}).add([{"id": "1"}])
    with pytest.raises(BloomchatError, match=r"differs in: .*model\.generation"):
        ExampleCache(tmp_path / "run", tr.name, cache_key(tr, backend))
    ExampleCache(tmp_path / "run", mct.name, cache_key(mct, backend))  # scoring did not change: resumes
    assert cache_key(tr, backend)["model"]["generation"] == GENERATION
