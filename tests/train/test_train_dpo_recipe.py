"""recipes/demo-dpo.yaml end to end on a tiny CPU model: the shipped pairs, a DPO stage, the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloomchat.errors import BloomchatError
from bloomchat.train import run_recipe
from bloomchat.train.report import read_metrics

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo-dpo.yaml"
PAIRS = RECIPE.parent / "data" / "demo-dpo-pairs.jsonl"


def test_shipped_pairs_are_prepared_pairs_in_eight_languages(tmp_path):
    from bloomchat.data.prepare_pairs import prepare_pairs

    rows = [json.loads(x) for x in PAIRS.read_text(encoding="utf-8").splitlines()]
    assert {r["lang"] for r in rows} == {"en", "zh", "fr", "es", "ar", "hi", "vi", "pt"}
    s = prepare_pairs(out=tmp_path / "p.jsonl", jsonl=[PAIRS], progress=False)  # the reader takes them back
    assert s["pairs"] == len(rows) and s["balanced"] and not s["filtered_pairs"]
    again = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(a["prompt"], a["chosen"], a["rejected"], a["lang"]) for a in again] == \
        [(r["prompt"], r["chosen"], r["rejected"], r["lang"]) for r in rows]


def test_demo_dpo_recipe_runs_end_to_end(tmp_path, micro_model_dir):
    res = run_recipe(RECIPE, vars={"workdir": str(tmp_path), "model": str(micro_model_dir)}, progress=False)
    (st,) = res["stages"]
    assert st["kind"] == "dpo" and st["loss"] == "dpo" and st["init_from"] == str(micro_model_dir)
    recs = read_metrics(Path(st["metrics"]))
    train = [r for r in recs if r["kind"] == "train"]
    assert len(train) == st["steps"] >= 2 and train[-1]["loss"] < train[0]["loss"]
    dev = st["dev_metrics"]
    assert dev["pairs"] >= 4 and len(dev["by_lang"]) >= 3  # held out by prompt, several languages
    model = Path(st["model_dir"])
    assert (model / "model.safetensors").exists() and "## Preference tuning" in (model / "README.md").read_text()


def test_demo_dpo_recipe_plans_every_loss(tmp_path, micro_model_dir):
    for loss in ("ipo", "orpo", "simpo"):
        plan = run_recipe(RECIPE, vars={"workdir": str(tmp_path), "model": str(micro_model_dir), "loss": loss},
                          dry_run=True)
        assert f"dpo (loss {loss}, beta 0.1)" in plan["text"] and str(PAIRS) in plan["text"]
    with pytest.raises(BloomchatError, match=r"stages\[0\]\.loss"):
        run_recipe(RECIPE, vars={"workdir": str(tmp_path), "model": str(micro_model_dir), "loss": "kto"},
                   dry_run=True)
