"""Bad input to training: a clear BloomchatError naming the problem, never a traceback or bad run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import write_recipe, write_shards

from bloomchat.errors import BloomchatError
from bloomchat.train import run_recipe


def _one_stage(model, shards, out, **top):
    return {"name": "e", "base_model": str(model), "output_dir": str(out), **top,
            "defaults": {"global_batch_size": 2, "micro_batch_size": 2, "lr": 1e-3},
            "stages": [{"name": "s", "max_steps": 1, "data": {"shards": str(shards)}}]}


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    from bloomchat.models.tokenizer import save_tokenizer, train_bpe_tokenizer

    texts = [f"word{i} other{i * 7} 数字{i}" for i in range(3000)]
    out = tmp_path_factory.mktemp("other_tok")
    save_tokenizer(train_bpe_tokenizer(texts, vocab_size=1200, min_frequency=1), out)
    return out


def test_base_model_that_does_not_exist(tmp_path, micro_model_dir, tiny_tokenizer):
    shards = write_shards(tmp_path / "sh", tiny_tokenizer, n_rows=4, seed=0)
    r = write_recipe(tmp_path / "r.yaml", _one_stage(tmp_path / "missing-model", shards, tmp_path / "out"))
    with pytest.raises(BloomchatError, match=r"r.yaml:\d+ base_model.*does not exist"):
        run_recipe(r)
    # a hub name that is not in the local cache, offline: one line from the CLI, exit 2
    r = write_recipe(tmp_path / "hub.yaml", _one_stage("no-such-org/no-such-model", shards, tmp_path / "out"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "bloomchat.train", str(r)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no-such-org/no-such-model" in p.stderr and p.stderr.count("\n") == 1


def test_tokenizer_that_does_not_match_the_model(tmp_path, micro_model_dir, other_tokenizer_dir):
    from bloomchat.models import load_tokenizer

    tok = load_tokenizer(other_tokenizer_dir)
    shards = write_shards(tmp_path / "sh", tok, n_rows=4, seed=0)
    r = write_recipe(tmp_path / "r.yaml", _one_stage(micro_model_dir, shards, tmp_path / "out",
                                                     tokenizer=str(other_tokenizer_dir)))
    with pytest.raises(BloomchatError, match=r"tokenizer has \d+ tokens but the model's vocabulary has \d+"):
        run_recipe(r, progress=False)
    assert not (tmp_path / "out" / "s" / "checkpoints").exists()


def test_shards_made_by_another_tokenizer(tmp_path, micro_model_dir, other_tokenizer_dir):
    from bloomchat.models import load_tokenizer

    shards = write_shards(tmp_path / "sh", load_tokenizer(other_tokenizer_dir), n_rows=4, seed=0)
    r = write_recipe(tmp_path / "r.yaml", _one_stage(micro_model_dir, shards, tmp_path / "out"))
    with pytest.raises(BloomchatError, match="tokenizer") as e:
        run_recipe(r, progress=False)
    assert str(shards) in str(e.value)
    assert not (tmp_path / "out" / "s" / "checkpoints").exists()


def test_fp16_on_cpu_is_refused(tmp_path, micro_model_dir, tiny_tokenizer):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    shards = write_shards(tmp_path / "sh", tiny_tokenizer, n_rows=4, seed=0)
    r = write_recipe(tmp_path / "r.yaml", _one_stage(micro_model_dir, shards, tmp_path / "out", precision="fp16"))
    with pytest.raises(BloomchatError, match="fp16 needs a GPU"):
        run_recipe(r, progress=False)


def test_model_vocabulary_padded_beyond_the_tokenizer_is_accepted(tmp_path, tiny_tokenizer):
    """Real BLOOM: a 250,680-token tokenizer and a 250,880-row embedding (padded for speed). The
    rows past the tokenizer are never produced, so training must accept it -- only a tokenizer
    *larger* than the embedding is refused (test above)."""
    import json

    from bloomchat.models import build_bloom, save_pretrained

    padded = len(tiny_tokenizer) + 200
    model_dir = save_pretrained(build_bloom("micro", vocab_size=padded, seed=0), tiny_tokenizer, tmp_path / "padded")
    shards = write_shards(tmp_path / "sh", tiny_tokenizer, n_rows=4, seed=0)
    recipe = _one_stage(model_dir, shards, "${out}")
    res = run_recipe(write_recipe(tmp_path / "r.yaml", recipe), vars={"out": str(tmp_path / "out")}, progress=False)
    model = res["final_model_dir"]
    assert json.loads(open(f"{model}/config.json").read())["vocab_size"] == padded  # rows kept, not resized
    from bloomchat.models import load_tokenizer

    assert len(load_tokenizer(model)) == len(tiny_tokenizer)
    # the card records the --set values the recipe's placeholders were filled with
    assert f"`--set out={tmp_path / 'out'}`" in open(f"{model}/README.md").read()


def test_flex_on_cpu_is_refused_before_any_stage_runs(tmp_path, micro_model_dir, tiny_tokenizer):
    shards = write_shards(tmp_path / "sh", tiny_tokenizer, n_rows=4, seed=0)
    r = write_recipe(tmp_path / "r.yaml", _one_stage(micro_model_dir, shards, tmp_path / "out", attention="flex"))
    with pytest.raises(BloomchatError, match="attention 'flex' trains on a CUDA GPU only") as e:
        run_recipe(r, progress=False)
    assert e.value.where.endswith("attention")
    assert not (tmp_path / "out").exists()  # refused before anything was written
