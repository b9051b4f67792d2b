"""The generation core on a CUDA GPU: exact tokens in fp32, bf16 by default, bitsandbytes int8.

Skipped without a CUDA GPU (CI has none); a session lent a GPU runs them with
`python -m pytest -m gpu` (bench/gpu_check.sh does, and records what it measured).
"""

from __future__ import annotations

import threading

import pytest
import torch

from bloomchat.infer import GenerationParams, load_chat_model
from infer_helpers import CHATS, save_varied_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = GenerationParams(temperature=0, repetition_penalty=1.2, max_new_tokens=16)
PROMPTS = CHATS


def _hf_greedy(cm, msgs, n):
    ids = cm.prompt_ids(msgs)
    x = torch.tensor([ids], device=cm.model.device)
    out = cm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                            repetition_penalty=1.2, eos_token_id=cm.eos_ids, pad_token_id=cm.tokenizer.pad_token_id)
    want = out[0, len(ids):].tolist()
    return want[:next((i for i, t in enumerate(want) if t in cm.eos_ids), len(want))]


def _submit_all(cm, prompts, params):
    """Submit every prompt at once (one batch on the GPU); returns each request's token ids."""
    done = [threading.Event() for _ in prompts]
    handles = [cm.engine.submit(cm.prompt_ids(m), params, lambda ev, d=d: ev.done and d.set(), stop_texts=())
               for m, d in zip(prompts, done)]
    assert all(d.wait(60) for d in done)
    return [h._seq.ids for h in handles]


def test_gpu_fp32_batched_greedy_equals_transformers_generate(micro_model_dir):
    cm = load_chat_model(micro_model_dir, device="cuda", dtype="float32")
    try:
        assert cm.model.device.type == "cuda"
        got = _submit_all(cm, PROMPTS, GREEDY)
        assert got == [_hf_greedy(cm, m, 16) for m in PROMPTS]
        assert cm.engine.max_rows_seen >= 2  # they really shared forward passes
    finally:
        cm.close()


def test_gpu_defaults_to_bf16_and_streams_concurrently(micro_model_dir):
    cm = load_chat_model(micro_model_dir, device="cuda")
    try:
        assert next(cm.model.parameters()).dtype == torch.bfloat16
        params = GenerationParams(max_new_tokens=12, seed=3)
        got = _submit_all(cm, PROMPTS * 4, params)
        assert all(len(ids) > 0 for ids in got)
        assert cm.engine.max_rows_seen >= 8
        # in bf16 the batch's shape changes the kernels' rounding, so a seeded reply is compared
        # with itself alone, not with the same request inside a batch
        a = cm.reply(PROMPTS[1], params)
        b = cm.reply(PROMPTS[1], params)
        assert a == b
    finally:
        cm.close()


def test_gpu_int8_is_bitsandbytes_and_close_to_bf16(micro_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    # random weights large enough that greedy replies vary token to token (a wrong path shows)
    varied = save_varied_model(micro_model_dir, tmp_path / "varied")
    ref = load_chat_model(varied, device="cuda")
    q = load_chat_model(varied, device="cuda", quantize="int8")
    try:
        linears = [m for m in q.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
        assert linears, "no bitsandbytes int8 layers in the quantized model"
        assert q.model.get_memory_footprint() < ref.model.get_memory_footprint()
        ids = torch.tensor([q.prompt_ids(PROMPTS[0]) + q.prompt_ids(PROMPTS[1])], device="cuda")
        with torch.inference_mode():
            la = ref.model(ids).logits.float().log_softmax(-1)
            lb = q.model(ids).logits.float().log_softmax(-1)
        kl = float((la.exp() * (la - lb)).sum(-1).mean())
        assert kl < 0.05, kl
        # the engine generates on the int8 layers exactly as transformers' generate does, one
        # request at a time (the same shapes, so the same int8 kernels and outlier columns)
        for m in PROMPTS:
            assert _submit_all(q, [m], GREEDY) == [_hf_greedy(q, m, 16)]
    finally:
        ref.close()
        q.close()
