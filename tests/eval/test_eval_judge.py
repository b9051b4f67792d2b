"""Pairwise judge (both orders, ties, length control) and its agreement with arena votes:
verdict logic with a scripted judge, hand-computed Cohen's kappa on an arena database whose
agreement is known, and the whole path with `bloomchat serve` as the judge endpoint."""

from __future__ import annotations

import json

import pytest

from bloomchat.arena.db import Assignment, Database, Prompt, Rater, Reply
from bloomchat.arena.judge_agreement import agreement_by_lang, cohen_kappa, judge_agreement, verdict
from bloomchat.eval.backends import Reply as GenReply
from bloomchat.eval.judge import JudgeTask, combine, length_controlled, parse_verdict
from server_helpers import start_serve


def test_parse_and_combine_verdicts():
    assert parse_verdict("A is wordy. [[B]]") == "B"
    assert parse_verdict("first [[A]] then on reflection [[C]]") == "C"
    assert parse_verdict("A is better") is None
    assert combine("A", "B") == ("a", True)  # swapped order: its B is system a
    assert combine("B", "A") == ("b", True)
    assert combine("A", "A") == ("tie", False)  # always the first position: position bias, a tie
    assert combine("C", "C") == ("tie", True)
    assert combine(None, "B") == ("tie", False)


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


class ScriptedJudge:
    """Prefers the reply holding "good"; a tie when both or neither do; records what it was asked."""

    name = "scripted"

    def __init__(self, position_bias=False):
        self.asked, self.position_bias = [], position_bias

    def generate(self, chats, params):
        out = []
        for c in chats:
            text = c[0]["content"]
            self.asked.append(text)
            a = text.split("[Assistant A's reply]")[1].split("[Assistant B's reply]")[0]
            b = text.split("[Assistant B's reply]")[1]
            if self.position_bias:
                v = "A"
            else:
                v = "C" if ("good" in a) == ("good" in b) else ("A" if "good" in a else "B")
            out.append(GenReply(text=f"Reasoning. [[{v}]]"))
        return out


def _sides(tmp_path):
    prompts = [("p1", "zh", "你好"), ("p2", "zh", "北京在哪里？"), ("p3", "fr", "Bonjour"), ("p4", "fr", "Pourquoi ?")]
    a = _write(tmp_path / "base.jsonl", [{"prompt_id": k, "lang": lg, "prompt": q, "system": "base",
                                          "reply": r} for (k, lg, q), r in zip(prompts, ["good", "meh", "good", "good"])])
    b = _write(tmp_path / "stage2.jsonl", [{"prompt_id": k, "lang": lg, "prompt": q, "system": "stage2",
                                            "reply": r} for (k, lg, q), r in zip(prompts, ["bad", "good answer", "good", "no"])])
    return a, b


def test_judge_task_both_orders_and_outcomes(tmp_path):
    a, b = _sides(tmp_path)
    task = JudgeTask(str(a), data_b=str(b))
    judge = ScriptedJudge()
    recs = {r["id"]: r for r in task.run_batch(judge, task.examples())}
    assert len(judge.asked) == 8  # each pair in both orders
    assert "The user writes in Chinese" in judge.asked[0]
    assert [recs[k]["outcome"] for k in ("p1", "p2", "p3", "p4")] == ["a", "b", "tie", "a"]
    assert all(r["consistent"] for r in recs.values())
    assert recs["p1"]["system_a"] == "base" and recs["p1"]["system_b"] == "stage2"
    s = task.summarize(list(recs.values()), bootstrap=0)
    assert s["zh"]["a_score"]["value"] == 0.5 and s["fr"]["a_score"]["value"] == 0.75
    assert s["fr"]["ties"]["value"] == 0.5
    biased = JudgeTask(str(a), data_b=str(b))
    recs = biased.run_batch(ScriptedJudge(position_bias=True), biased.examples())
    assert {r["outcome"] for r in recs} == {"tie"} and not any(r["consistent"] for r in recs)


def test_length_controlled_score_removes_a_length_preference():
    # a wins exactly when its reply is longer, and is longer half the time: at equal lengths the
    # outcome is a coin toss, while the raw score follows the length split
    recs = [{"outcome": "a" if i % 2 else "b", "len_a": 100 + (50 if i % 2 else -50), "len_b": 100} for i in range(40)]
    lc = length_controlled(recs, bootstrap=50)
    assert lc["value"] == pytest.approx(0.5, abs=0.02) and lc["length_slope"] > 1
    skew = recs + [{"outcome": "a", "len_a": 150, "len_b": 100} for _ in range(20)]  # 40/60 wins, all longer
    raw = sum(r["outcome"] == "a" for r in skew) / len(skew)
    assert length_controlled(skew, bootstrap=0)["value"] < raw - 0.05


# ------------------------------------------------------------------------------ agreement
def test_cohen_kappa_hand_computed():
    human = ["lo"] * 5 + ["hi"] * 3 + ["tie"] * 2
    judge = ["lo"] * 4 + ["hi"] + ["hi"] * 2 + ["tie"] + ["tie", "lo"]
    # p_o = 7/10; margins .5/.3/.2 on both sides: p_e = .25 + .09 + .04 = .38
    assert cohen_kappa(human, judge) == pytest.approx((0.7 - 0.38) / (1 - 0.38))
    assert cohen_kappa(["lo", "hi"], ["lo", "hi"]) == 1.0
    assert cohen_kappa(["lo"] * 4, ["lo"] * 4) is None  # chance agreement 1: undefined


def test_cohen_kappa_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    human = ["lo"] * 5 + ["hi"] * 3 + ["tie"] * 2
    judge = ["lo"] * 4 + ["hi"] + ["hi"] * 2 + ["tie"] + ["tie", "lo"]
    assert cohen_kappa(human, judge) == pytest.approx(metrics.cohen_kappa_score(human, judge))


# zh: the hand-computed case above twice over (kappa 0.516); fr: the judge always says "lo"
# while the raters split evenly (kappa 0)
ZH = [("lo", "lo")] * 4 + [("lo", "hi"), ("hi", "hi"), ("hi", "hi"), ("hi", "tie"), ("both_bad", "tie"), ("tie", "lo")]
FR = [("lo", "lo")] * 10 + [("hi", "lo")] * 10


def _arena_with_votes(path, cases: dict[str, list[tuple[str, str]]]):
    """An arena database with one vote per prompt on base (lo) vs stage2 (hi), and the judge's
    records for the same prompts (system_a = stage2, to exercise the mapping)."""
    db = Database(str(path))
    records = []
    with db.Session.begin() as s:
        rater = Rater(name="r", langs="zh,fr", token_hash="x" * 64)
        s.add(rater)
        s.flush()
        for lang, pairs in cases.items():
            for i, (human, judge) in enumerate(pairs):
                key = f"set/{lang}/{i}"
                p = Prompt(key=key, lang=lang, set_name="set", turns_json=json.dumps([{"role": "human", "text": "q"}]))
                s.add(p)
                s.flush()
                s.add_all([Reply(prompt_id=p.id, system="base", text="x"), Reply(prompt_id=p.id, system="stage2", text="y")])
                s.add(Assignment(rater_id=rater.id, prompt_id=p.id, system_lo="base", system_hi="stage2",
                                 left_is_lo=True, choice="left", outcome=human))
                records.append({"id": key, "group": lang, "system_a": "stage2", "system_b": "base",
                                "outcome": {"lo": "b", "hi": "a", "tie": "tie"}[judge]})
    return db, records


def _judge_run(tmp_path, records):
    run = tmp_path / "judge-run"
    (run / "examples").mkdir(parents=True)
    _write(run / "examples" / "judge.jsonl", records)
    (run / "results.json").write_text(json.dumps({"tasks": {"judge": {"kind": "judge",
                                                                      "examples_file": "examples/judge.jsonl"}}}))
    return run


def test_judge_agreement_on_votes_of_known_agreement(tmp_path):
    db, records = _arena_with_votes(tmp_path / "arena.sqlite", {"zh": ZH * 2, "fr": FR})
    doc = judge_agreement(db, _judge_run(tmp_path, records), tmp_path / "out", bootstrap=200)
    zh, fr = doc["by_lang"]["zh"], doc["by_lang"]["fr"]
    assert zh["n"] == 20 and zh["agreement"] == pytest.approx(0.7)
    assert zh["kappa"] == pytest.approx(0.32 / 0.62)
    assert zh["kappa_ci95"][0] <= zh["kappa"] <= zh["kappa_ci95"][1]
    assert fr["agreement"] == pytest.approx(0.5) and fr["kappa"] == pytest.approx(0.0)
    assert doc["cannot_stand_in"] == ["fr"] and doc["too_few_votes"] == []
    assert doc["by_lang"]["all"]["n"] == 40
    assert (tmp_path / "out" / "judge_agreement.png").stat().st_size > 1000
    few = verdict(agreement_by_lang([{"key": "k", "lang": "sw", "human": "lo", "judge": "hi"}], bootstrap=0))
    assert few["too_few_votes"] == ["sw"] and few["cannot_stand_in"] == []


@pytest.mark.slow
def test_judge_end_to_end_with_bloomchat_serve_and_arena(micro_model_dir, tmp_path, capsys):
    """`bloomchat serve` (tiny model) judges two systems exported from an arena database, then
    judge-agreement sets its verdicts beside the arena's votes."""
    from bloomchat.cli import main

    db, _ = _arena_with_votes(tmp_path / "arena.sqlite", {"zh": ZH, "fr": FR[:4]})
    db_url = str(tmp_path / "arena.sqlite")
    assert main(["arena", "export-replies", "--db", db_url, "--systems", "base,stage2", "--out",
                 str(tmp_path / "pairs")]) == 0
    run = tmp_path / "judge-run"
    with start_serve(micro_model_dir, "--served-model-name", "judge", "--threads", "1") as server:
        assert main(["eval", "run", "judge", "--backend", "openai", "--base-url", server.url + "/v1", "--task", "judge",
                     "--data", str(tmp_path / "pairs" / "base.jsonl"), "--data-b", str(tmp_path / "pairs" / "stage2.jsonl"),
                     "--max-new-tokens", "8", "--no-progress", "--bootstrap", "50", "-o", str(run)]) == 0
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    entry = next(iter(res["tasks"].values()))
    assert entry["systems"] == {"a": "base", "b": "stage2"} and entry["n_examples"] == 14
    recs = [json.loads(x) for x in (run / entry["examples_file"]).read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(r["judge_ab"], str) and isinstance(r["judge_ba"], str) for r in recs)  # both orders asked
    capsys.readouterr()
    assert main(["arena", "judge-agreement", "--db", db_url, "--judge", str(run), "--out", str(tmp_path / "agree"),
                 "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "judge cannot stand in for native speakers in:" in out
    doc = json.loads((tmp_path / "agree" / "judge_agreement.json").read_text(encoding="utf-8"))
    # the judge's outcomes are in its records: the agreement is recomputed from them and the votes
    human = {f"set/zh/{i}": ("tie" if h == "both_bad" else h) for i, (h, _) in enumerate(ZH)}
    judged = {r["id"]: {"a": "lo", "b": "hi", "tie": "tie"}[r["outcome"]] for r in recs}  # a = base = lo
    want = sum(human[k] == judged[k] for k in human) / len(human)
    assert doc["by_lang"]["zh"]["agreement"] == pytest.approx(want)
