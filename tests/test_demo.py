"""`bloomchat demo`: bundled data as promised, and the whole pipeline end to end through the CLI."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bloomchat.cli import main
from bloomchat.demo.run import DEMO_CHATS
from bloomchat.demo.workdir import write_demo_data

LANGS = {"zh", "en", "fr", "es", "ar", "hi", "vi", "pt"}


def test_bundled_data_has_400_conversations_in_8_languages_over_3_layouts(tmp_path):
    from bloomchat.data import prepare

    files = write_demo_data(tmp_path / "data")
    assert {f.parent.name for f in files} == {"oig", "dolly", "oasst1"}
    out = tmp_path / "all.jsonl"
    prepare(out=out, oig=[f for f in files if f.parent.name == "oig"],
            dolly=[f for f in files if f.parent.name == "dolly"],
            oasst1=[f for f in files if f.parent.name == "oasst1"], basic_repeat=0)
    recs = [json.loads(line) for line in out.open(encoding="utf-8")]
    assert len(recs) >= 400
    langs = Counter(r["lang"].split("-")[0] for r in recs)
    assert LANGS <= set(langs), langs
    assert min(langs[lang] for lang in LANGS) >= 40, langs
    assert set(Counter(r["source"] for r in recs)) >= {"dolly", "oasst1"}
    # prosocial items are in the bundle but never reach the prepared data
    assert not any("prosocial" in r["source"] for r in recs)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One real `bloomchat demo` run (the default tiny preset, recipes/demo.yaml) shared by the checks below."""
    import io
    from contextlib import redirect_stdout

    workdir = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["demo", "--base", "tiny", "--workdir", str(workdir)])
    return workdir, rc, buf.getvalue()


def test_demo_ends_with_replies_and_next_commands(demo_run):
    workdir, rc, out = demo_run
    assert rc == 0
    for _, turns in DEMO_CHATS:
        for text in turns:
            assert f"<human>: {text}" in out
    bot_lines = [line.split("<bot>:", 1)[1].strip() for line in out.splitlines() if "<bot>:" in line]
    assert len(bot_lines) == sum(len(t) for _, t in DEMO_CHATS)
    assert any(bot_lines)
    assert f"bloomchat chat {workdir / 'model'}" in out


def test_demo_model_loads_with_plain_transformers(demo_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, _, _ = demo_run
    model_dir = workdir / "model"
    assert (model_dir / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "bloom" and model.config.hidden_size == 256 and model.config.n_layer == 4
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<human>: 你好\n<bot>:"
    ids = tok(prompt, return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_demo_trained_both_stages_and_loss_fell(demo_run):
    import math

    from transformers import AutoConfig

    workdir, _, _ = demo_run
    state = json.loads((workdir / "demo-state.json").read_text())
    stages = state["train"]["result"]["stages"]
    assert len(stages) == 2
    # A random model's loss is about ln(vocab); after both stages it must be clearly below.
    vocab = AutoConfig.from_pretrained(workdir / "model").vocab_size
    assert stages[-1]["final_loss"] < math.log(vocab) - 1.0


def test_second_demo_run_reuses_everything(demo_run):
    import io
    from contextlib import redirect_stdout

    workdir, _, _ = demo_run
    weights = workdir / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["demo", "--base", "tiny", "--workdir", str(workdir)]) == 0
    out = buf.getvalue()
    assert f"reusing {workdir / 'base'}" in out
    assert f"reusing {workdir / 'model'}" in out
    assert weights.stat().st_mtime_ns == before


def test_demo_ends_with_a_preference_stage_on_top_of_the_sft_model(demo_run):
    workdir, _, out = demo_run
    state = json.loads((workdir / "demo-state.json").read_text())
    sft = state["train"]["result"]["final_model_dir"]
    dpo = state["dpo"]["result"]
    (stage,) = dpo["stages"]
    assert stage["name"] == "dpo-demo-pairs" and stage["kind"] == "dpo"
    assert stage["init_from"] == sft  # DPO starts from the supervised model, as a third stage
    assert "held-out pairs: reward accuracy" in out
    # the model the demo chats with and saves is the DPO model
    from safetensors.torch import load_file

    a = load_file(str(workdir / "model" / "model.safetensors"))
    b = load_file(str(dpo["final_model_dir"] + "/model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
