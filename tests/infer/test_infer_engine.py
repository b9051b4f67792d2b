"""The generation core: same tokens as transformers' generate, batching, stops, cancel, errors."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from bloomchat.errors import BloomchatError
from bloomchat.infer import GenerationParams, load_chat_model
from bloomchat.infer.engine import Event
from infer_helpers import CHATS, save_varied_model, scripted_chat_model

GREEDY = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
PROMPTS = CHATS[:3]


@pytest.fixture(scope="module")
def cm(micro_model_dir):
    m = load_chat_model(micro_model_dir)
    yield m
    m.close()


def _hf_greedy(cm, msgs, n, penalty):
    ids = cm.prompt_ids(msgs)
    out = cm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=n, do_sample=False, repetition_penalty=penalty,
                            eos_token_id=cm.eos_ids, pad_token_id=cm.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_infer_greedy_matches_transformers_generate(cm, penalty):
    for msgs in PROMPTS:
        want = _hf_greedy(cm, msgs, 12, penalty)
        done = threading.Event()
        h = cm.engine.submit(cm.prompt_ids(msgs), GREEDY.replace(repetition_penalty=penalty),
                             lambda ev: ev.done and done.set(), stop_texts=())
        assert done.wait(30)
        eos_at = next((i for i, t in enumerate(want) if t in cm.eos_ids), len(want))
        assert h._seq.ids == want[:eos_at]


def test_infer_prompt_matches_chat_template_and_training_segments(cm):
    msgs = [{"role": "system", "content": "Be brief."}] + PROMPTS[2]
    text = cm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = cm.prompt_ids(msgs)
    assert cm.tokenizer.decode(ids) == text  # the template renders the EOS after each reply
    assert ids == list(cm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"])
    assert text.endswith("\n<bot>:")
    # the earlier bot reply is followed by EOS, as the packer wrote it in training
    eos = cm.eos_ids[0]
    assert ids.count(eos) == 1
    reply_ids = cm.tokenizer(" Très bien", add_special_tokens=False)["input_ids"]
    i = ids.index(eos)
    assert ids[i - len(reply_ids):i] == reply_ids


def test_infer_batch_equals_one_by_one(cm):
    solo = [cm.reply(m, GREEDY) for m in PROMPTS]
    batched = cm.reply_batch(PROMPTS * 2, GREEDY)
    assert batched == solo * 2
    assert cm.engine.max_rows_seen >= 2


def test_infer_joining_a_running_batch_changes_nothing(cm):
    """A request admitted mid-generation (continuous batching) gets the same greedy reply."""
    long = GREEDY.replace(max_new_tokens=60)
    solo_a = cm.reply(PROMPTS[0], long)
    solo_b = cm.reply(PROMPTS[1], GREEDY)
    pieces_a, out_b = [], {}
    it = cm.stream(PROMPTS[0], long)
    pieces_a.append(next(it))
    t = threading.Thread(target=lambda: out_b.setdefault("b", cm.reply(PROMPTS[1], GREEDY)))
    t.start()
    pieces_a.extend(it)
    t.join(30)
    assert "".join(pieces_a) == solo_a
    assert out_b["b"] == solo_b


def test_infer_seeded_sampling_is_reproducible_and_differs_by_seed(cm):
    p = GenerationParams(max_new_tokens=20, seed=7)
    a, b = cm.reply(PROMPTS[0], p), cm.reply(PROMPTS[0], p)
    c = cm.reply(PROMPTS[0], p.replace(seed=8))
    assert a == b and a != c


def test_infer_max_new_tokens_and_finish_reason(cm):
    evs = list(cm.stream_ids(cm.prompt_ids(PROMPTS[0]), GREEDY.replace(max_new_tokens=5), stop_texts=()))
    assert evs[-1].done and evs[-1].finish_reason == "length" and evs[-1].completion_tokens == 5


def test_infer_bad_input_is_a_bloomchat_error(cm):
    with pytest.raises(BloomchatError, match="non-empty"):
        cm.reply([], GREEDY)
    with pytest.raises(BloomchatError, match=r"messages\[0\]\.role"):
        cm.reply([{"role": "robot", "content": "x"}], GREEDY)
    with pytest.raises(BloomchatError, match="top_p"):
        cm.reply(PROMPTS[0], GREEDY.replace(top_p=0))
    with pytest.raises(BloomchatError, match="beyond the model's context of 2048"):
        cm.reply(PROMPTS[0], GREEDY.replace(max_new_tokens=2040))
    with pytest.raises(BloomchatError, match="unknown quantization"):
        load_chat_model("/nonexistent", quantize="int4")
    with pytest.raises(BloomchatError, match="not found"):
        load_chat_model("/nonexistent/model")


def test_infer_int8_cpu_dynamic_quantization(micro_model_dir, tmp_path):
    """int8 keeps the model's predictions (small KL to fp32) and the engine generates on it exactly as
    transformers' generate does (on a model whose greedy replies vary, so a wrong path shows)."""
    varied = save_varied_model(micro_model_dir, tmp_path / "varied")
    ref = load_chat_model(varied, dtype="float32", device="cpu")
    q = load_chat_model(varied, quantize="int8", device="cpu")
    try:
        assert any("quantized" in type(m).__module__ for m in q.model.modules())
        ids = torch.tensor([q.prompt_ids(PROMPTS[0]) + q.prompt_ids(PROMPTS[1])])
        with torch.inference_mode():
            la = ref.model(ids).logits.float().log_softmax(-1)
            lb = q.model(ids).logits.float().log_softmax(-1)
        assert float((la.exp() * (la - lb)).sum(-1).mean()) < 0.05
        params = GREEDY.replace(repetition_penalty=1.2, max_new_tokens=16)
        for msgs in PROMPTS:
            want = _hf_greedy(q, msgs, 16, 1.2)
            done = threading.Event()
            h = q.engine.submit(q.prompt_ids(msgs), params, lambda ev: ev.done and done.set(), stop_texts=())
            assert done.wait(30)
            assert h._seq.ids == want[:next((i for i, t in enumerate(want) if t in q.eos_ids), len(want))]
    finally:
        ref.close()
        q.close()


# ----------------------------------------------------------------------------- scripted model
def _run_scripted(tokenizer, text_script, eos_after=True, params=GREEDY.replace(max_new_tokens=50)):
    cm = scripted_chat_model(tokenizer, text_script, eos_after=eos_after)
    try:
        evs = list(cm.stream_events([{"role": "user", "content": "hi"}], params))
    finally:
        cm.close()
    return "".join(e.text for e in evs), evs[-1]


def test_infer_stops_at_next_human_turn_and_cuts_it(tiny_tokenizer):
    text, last = _run_scripted(tiny_tokenizer, " I am fine.\n<human>: and you?", eos_after=False)
    assert text == "I am fine."
    assert last.finish_reason == "stop"


def test_infer_stops_at_eos(tiny_tokenizer):
    text, last = _run_scripted(tiny_tokenizer, " Hello there", eos_after=True)
    assert text == "Hello there" and last.finish_reason == "stop"


def test_infer_ignore_eos_generates_max_new_tokens(tiny_tokenizer):
    """ignore_eos (vLLM's extension, for fixed-length benchmarks): the model's EOS no longer ends the
    reply; the reply text is the same (EOS has none) and every token is counted."""
    text, last = _run_scripted(tiny_tokenizer, " Hello there", eos_after=True,
                               params=GREEDY.replace(max_new_tokens=20, ignore_eos=True))
    assert text == "Hello there" and last.finish_reason == "length" and last.completion_tokens == 20


def test_infer_user_stop_string(tiny_tokenizer):
    text, last = _run_scripted(tiny_tokenizer, " one two three four", eos_after=True,
                               params=GREEDY.replace(max_new_tokens=50, stop=("three",)))
    assert text == "one two" and last.finish_reason == "stop"


def test_infer_cancel_stops_generation(cm):
    done = threading.Event()
    got: list[Event] = []

    def sink(ev):
        got.append(ev)
        if ev.done:
            done.set()
    h = cm.engine.submit(cm.prompt_ids(PROMPTS[0]), GREEDY.replace(max_new_tokens=1500), sink, stop_texts=())
    time.sleep(0.05)
    h.cancel()
    assert done.wait(10)
    assert got[-1].finish_reason == "cancelled" and got[-1].completion_tokens < 1500


def test_infer_scripted_rows_batch_and_stream_in_pieces(tiny_tokenizer):
    """Several scripted replies at once through the real engine: each gets its own full text."""
    cm = scripted_chat_model(tiny_tokenizer, " 北京是中国的首都。 Très bien, merci.", eos_after=True)
    try:
        pieces = list(cm.stream([{"role": "user", "content": "hi"}], GREEDY.replace(max_new_tokens=100)))
        assert len(pieces) > 3 and "".join(pieces) == "北京是中国的首都。 Très bien, merci."
        outs = cm.reply_batch([[{"role": "user", "content": "x" * k}] for k in range(1, 6)],
                              GREEDY.replace(max_new_tokens=100))
        assert outs == ["北京是中国的首都。 Très bien, merci."] * 5
        assert cm.engine.max_rows_seen == 5
    finally:
        cm.close()


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 20.0])  # flat (bisection path) to peaked (top-k path)
def test_infer_top_p_set_equals_transformers_warper(scale):
    from transformers.generation.logits_process import TopPLogitsWarper

    from bloomchat.infer.engine import nucleus_probs

    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(6, 3000, generator=g) * scale
    for top_p in (0.5, 0.9, 0.99):
        want = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
        got = nucleus_probs(logits.softmax(-1), torch.full((6,), top_p)) > 0
        assert (want != got).sum() <= 1, f"top_p {top_p}, scale {scale}"  # at most a rounding tie


@pytest.mark.parametrize("top_p", [0.5, 0.9])
def test_infer_rejection_top_p_sampling_has_the_warper_distribution(top_p):
    """Frequencies of 40k rejection-sampled draws match transformers' top-p distribution."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from bloomchat.infer.engine import sample_top_p

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 12, generator=g) * 1.5
    want = TopPLogitsWarper(top_p)(None, logits.clone()).softmax(-1)[0]
    n = 40000
    probs = logits.softmax(-1).repeat(n, 1)
    draws = sample_top_p(probs, torch.full((n,), top_p), [None] * n)
    freq = torch.bincount(draws, minlength=12).float() / n
    assert torch.all(freq[want == 0] == 0)  # never outside the nucleus
    assert torch.allclose(freq, want, atol=0.01)


def test_infer_inverse_cdf_draws_follow_the_probabilities_and_skip_zeros():
    from bloomchat.infer.engine import _multinomial

    # zero-probability tokens at the start, in the middle and at the end must never be drawn
    p = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.6, 0.3, 0.0])
    n = 30000
    draws = _multinomial(p.repeat(n, 1), [None] * n)
    freq = torch.bincount(draws, minlength=7).float() / n
    assert torch.all(freq[p == 0] == 0)
    assert torch.allclose(freq, p, atol=0.01)
    # seeded rows: the same seeds draw the same tokens; different seeds draw different ones
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(64)]  # noqa: E731
    a = _multinomial(p.repeat(64, 1), gens())
    b = _multinomial(p.repeat(64, 1), gens())
    assert torch.equal(a, b) and len(set(a.tolist())) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infer_incremental_detokenization_equals_decoding_the_whole_reply(tiny_tokenizer, seed):
    """At every step the streamed text equals decoding all reply tokens, up to a character still
    waiting for its next bytes (Chinese/Arabic/Hindi split across byte-level tokens, random ids)."""
    from bloomchat.infer.engine import _Seq, detokenize_step

    tok = tiny_tokenizer
    g = torch.Generator().manual_seed(seed)
    text = "你好，请介绍一下北京。مرحبا، كيف حالك؟ नमस्ते Olá, tudo bem? def add(a, b): return a + b"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids += torch.randint(0, len(tok), (200,), generator=g).tolist()  # arbitrary byte soup too
    s = _Seq(rid=1, prompt_ids=[], params=GenerationParams(), sink=lambda ev: None, stop_texts=())
    for t in ids:
        s.ids.append(t)
        detokenize_step(s, tok)
        full = tok.decode(s.ids, skip_special_tokens=True)
        assert full.startswith(s.text)
        if not full.endswith("\ufffd"):
            assert s.text == full
    assert s.read_from > 0  # it really decoded only a window


@pytest.mark.parametrize("top_k,top_p", [(3, 0.9), (10, 0.5), (50, 0.9), (0, 0.9), (10, 1.0)])
def test_infer_top_k_then_top_p_sampling_has_the_warpers_distribution(top_k, top_p):
    """top_k then top_p, as transformers' generate applies TopKLogitsWarper then TopPLogitsWarper:
    frequencies of 40k draws equal that distribution (top_k 0 = off)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from bloomchat.infer.engine import sample_top_p, top_k_probs

    g = torch.Generator().manual_seed(top_k + 7)
    logits = torch.randn(1, 64, generator=g) * 1.5
    scores = TopKLogitsWarper(top_k)(None, logits.clone()) if top_k else logits.clone()
    want = TopPLogitsWarper(top_p)(None, scores).softmax(-1)[0]
    n = 40000
    probs = top_k_probs(logits.softmax(-1).repeat(n, 1), torch.full((n,), top_k))
    draws = sample_top_p(probs, torch.full((n,), top_p), [None] * n)
    freq = torch.bincount(draws, minlength=64).float() / n
    assert torch.all(freq[want == 0] == 0)  # never outside top-k and the nucleus
    assert torch.allclose(freq, want, atol=0.01)


def test_infer_top_k_rows_mix_in_one_batch_and_keep_ties():
    from bloomchat.infer.engine import top_k_probs

    p = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1], [0.4, 0.2, 0.2, 0.1, 0.1], [0.4, 0.2, 0.2, 0.1, 0.1]])
    got = top_k_probs(p, torch.tensor([2, 0, 9]))
    assert torch.allclose(got[0], torch.tensor([0.5, 0.25, 0.25, 0, 0]))  # the tie with the 2nd is kept
    assert torch.equal(got[1], p[1]) and torch.equal(got[2], p[2])  # 0 = off; k beyond the vocabulary


def test_infer_top_k_1_sampling_is_greedy(cm):
    msgs = PROMPTS[0]
    greedy = cm.reply(msgs, GREEDY)
    sampled = cm.reply(msgs, GREEDY.replace(temperature=1.0, top_k=1, seed=5))
    assert sampled == greedy


def test_infer_repetition_penalty_spares_special_tokens_hand_computed():
    from bloomchat.infer.engine import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, True]])
    penalisable = torch.tensor([True, True, True, False])  # token 3 is EOS
    got = apply_repetition_penalty(logits, seen, torch.tensor([[1.2]]), penalisable)
    assert torch.allclose(got, torch.tensor([[2.0 / 1.2, -1.0 * 1.2, 0.5, 3.0]]))


class _FixedLM(torch.nn.Module):
    """Every step the same logits: EOS (id 2) 2.0, token 5 1.8, all others 0."""

    def __init__(self, vocab):
        super().__init__()
        from transformers import BloomConfig, GenerationConfig

        self.config, self.generation_config = BloomConfig(vocab_size=vocab), GenerationConfig(eos_token_id=2)
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, cache=None, attention_mask=None, use_cache=True):
        from types import SimpleNamespace

        from transformers import DynamicCache

        b, t = input_ids.shape
        cache = cache if cache is not None else DynamicCache()
        cache.update(torch.zeros(b, 1, t, 1), torch.zeros(b, 1, t, 1), 0)
        logits = torch.zeros(b, t, self.vocab)
        logits[..., 2], logits[..., 5] = 2.0, 1.8
        return SimpleNamespace(logits=logits, cache=cache)


def test_infer_eos_in_a_multi_turn_prompt_is_not_penalised(tiny_tokenizer):
    """From the second turn the prompt holds `</s>` after the earlier reply. Penalised (2.0 / 1.2 =
    1.67 < 1.8) the model would go on with token 5; spared, EOS (2.0) stays the most likely and it stops."""
    from bloomchat.infer import ChatModel

    cm = ChatModel(_FixedLM(len(tiny_tokenizer)), tiny_tokenizer)
    try:
        ids = [7, 8, 2, 9]  # a prompt holding EOS
        ev = cm.generate_ids([ids], GREEDY.replace(repetition_penalty=1.2, max_new_tokens=3))[0]
        assert ev.finish_reason == "stop" and ev.completion_tokens == 1  # EOS at once (penalised: 5, then EOS)
    finally:
        cm.close()
