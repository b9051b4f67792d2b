"""The real SmolLM2-135M-Instruct through every stage: import, engine, server, pack + LoRA train.

References: gguf's own reader (de-quantised tensors), transformers' `generate` (greedy ids), the
`openai` client (server), and plain transformers forward passes (the training loss).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from server_helpers import start_serve

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_import_is_a_plain_checkpoint_equal_to_the_gguf(smollm2_base, smollm2_gguf):
    from gguf import GGUFReader, dequantize
    from safetensors import safe_open

    from bloomchat.models.base_import import IMPORT_RECORD

    cfg = json.loads((smollm2_base / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    rec = json.loads((smollm2_base / IMPORT_RECORD).read_text())
    h = hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert rec["sha256"] == h and rec["format"] == "gguf" and rec["dtype"] == "float32"
    assert "{{" in json.loads((smollm2_base / "tokenizer_config.json").read_text())["chat_template"]
    # gguf's reader de-quantises the token embedding (Q4_1 or Q8_0 blocks): same numbers as ours
    t = next(t for t in GGUFReader(str(smollm2_gguf)).tensors if t.name == "token_embd.weight")
    ref = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(49152, 576).copy())
    with safe_open(str(smollm2_base / "model.safetensors"), "pt") as f:
        ours = f.get_tensor("model.embed_tokens.weight")
    assert ours.dtype == torch.float32 and torch.equal(ours, ref.float())


def test_engine_greedy_equals_transformers_generate_and_knows_paris(smollm2_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bloomchat.infer import GenerationParams, load_chat_model

    tok = AutoTokenizer.from_pretrained(smollm2_base)
    ref_model = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32).eval()
    prompts = [FRANCE, [{"role": "user", "content": "Name three colours."}]]
    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
    with load_chat_model(smollm2_base, dtype="float32") as cm:
        for msgs in prompts:
            ids = cm.prompt_ids(msgs)
            ref_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            assert ids == list(ref_ids)  # the model's own ChatML template, not BLOOMChat's
            with torch.no_grad():
                out = ref_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                         eos_token_id=cm.eos_ids, pad_token_id=tok.pad_token_id)
            ref_new = out[0, len(ids):].tolist()
            n_ref = next((i + 1 for i, t in enumerate(ref_new) if t in cm.eos_ids), len(ref_new))  # EOS counted
            ev = cm.generate_ids([ids], params)[0]
            # the engine streams text, not ids: same number of tokens and the same decoded text
            assert ev.completion_tokens == n_ref
            assert ev.final_text == tok.decode(ref_new[:n_ref], skip_special_tokens=True)
        assert "Paris" in cm.reply(FRANCE, params)


def test_serve_answers_paris_through_openai_client(smollm2_base):
    import openai

    with start_serve(smollm2_base, "--served-model-name", "smollm2", "--threads", "1", timeout=120) as server:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        r = c.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0, max_tokens=24,
                                      extra_body={"repetition_penalty": 1.0})
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason in ("stop", "length")
        assert server.stop() == 0, server.output()


def _masked_loss(model_dir, rows) -> float:
    """Mean loss per loss token over packed rows, each conversation run on its own (plain
    transformers, no packing code of ours)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for ids, mask, seg in rows:
            for s in sorted(set(seg)):
                idx = [i for i, v in enumerate(seg) if v == s]
                x = torch.tensor([[ids[i] for i in idx]])
                m = torch.tensor([mask[i] for i in idx])
                logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
                nll = -logp.gather(1, x[0, 1:, None])[:, 0]
                tot += float((nll * m[1:]).sum())
                n += int(m[1:].sum())
    return tot / n


def test_pack_and_two_lora_steps_lower_the_loss(smollm2_base, tmp_path):
    import yaml

    from bloomchat.pack import iter_rows, pack
    from bloomchat.train import run_recipe

    convs = [("What is the capital of France?", "The capital of France is Paris."),
             ("Quelle est la capitale de la France ?", "La capitale de la France est Paris."),
             ("中国的首都是哪里？", "中国的首都是北京。"),
             ("Nenne eine Farbe.", "Blau ist eine Farbe.")]
    prepared = tmp_path / "chats.jsonl"
    with open(prepared, "w", encoding="utf-8") as f:
        for i, (q, a) in enumerate(convs):
            turns = [{"role": "human", "text": q}, {"role": "bot", "text": a}]
            f.write(json.dumps({"prompt": "", "completion": f"<human>: {q}\n<bot>: {a}", "turns": turns,
                                "source": "test", "lang": None, "id": f"t:{i}"}, ensure_ascii=False) + "\n")
    packed = tmp_path / "packed"
    pack([prepared], str(smollm2_base), packed, max_seq_length=128, packing="greedy")
    rows = [(list(r["input_ids"]), list(r["loss_mask"]), list(r["segment_ids"])) for r in iter_rows(packed, "train")]
    assert sum(len(set(s)) for _, _, s in rows) == 4
    recipe = {"name": "real-lora", "base_model": str(smollm2_base), "output_dir": str(tmp_path / "run"),
              "seed": 1, "method": "lora", "precision": "fp32",
              "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
              "stages": [{"name": "s", "data": {"shards": str(packed)}, "max_steps": 2, "lr": 1.0e-3,
                          "global_batch_size": len(rows), "micro_batch_size": len(rows), "weight_decay": 0.0,
                          "save_every_steps": 0}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    res = run_recipe(path, progress=False)
    tuned = res["final_model_dir"]
    assert "quantization_config" not in json.loads((Path(tuned) / "config.json").read_text())
    before, after = _masked_loss(smollm2_base, rows), _masked_loss(tuned, rows)
    assert after < before - 0.05, (before, after)


def test_eval_runs_on_the_real_model(smollm2_base, tmp_path):
    """`bloomchat eval run` (multiple choice and chat) on the real Llama-architecture model: the
    per-option log-likelihoods equal a plain transformers forward pass, and the chat task answers
    the France question in English with Paris in it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bloomchat.cli import main

    mc = tmp_path / "mc.jsonl"
    items = [{"id": "1", "context": "The capital of France is", "choices": [" Paris", " Berlin"], "label": 0, "lang": "en"},
             {"id": "2", "context": "Water freezes at zero degrees", "choices": [" Celsius", " banana"], "label": 0,
              "lang": "en"}]
    mc.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    prompts = tmp_path / "probe_en.jsonl"
    prompts.write_text(json.dumps({"text": FRANCE[0]["content"]}) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["eval", "run", str(smollm2_base), "--task", "mc", "--data", str(mc), "-o", str(run)]) == 0
    assert main(["eval", "run", str(smollm2_base), "--task", "chat", "--data", str(prompts), "--greedy",
                 "--max-new-tokens", "16", "-o", str(run)]) == 0
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    mc_task = next(t for n, t in res["tasks"].items() if n.startswith("mc"))
    recs = [json.loads(x) for x in (run / mc_task["examples_file"]).read_text(encoding="utf-8").splitlines()]
    tok = AutoTokenizer.from_pretrained(smollm2_base)
    model = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32).eval()
    for it in items:
        rec = next(r for r in recs if r["id"] == it["id"])
        want = []
        for choice in it["choices"]:
            c = tok(it["context"], add_special_tokens=False)["input_ids"]
            t = tok(choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([c + t])).logits[0].float(), -1)
            want.append(sum(float(logp[len(c) - 1 + j, t[j]]) for j in range(len(t))))
        assert rec["logprobs"] == pytest.approx(want, abs=1e-3)
        assert rec["pred"]["sum"] == 0  # a real model knows these
    chat_task = next(t for n, t in res["tasks"].items() if n.startswith("chat"))
    turn = json.loads((run / chat_task["examples_file"]).read_text(encoding="utf-8").splitlines()[0])["turns"][0]
    assert "Paris" in turn["reply"] and turn["reply_lang"] == "en"
