"""Exact values: log-likelihood scoring against a hand computation with the model, the MC
normalisations, repetition, BLEU/chrF++ from sufficient statistics, bootstrap intervals."""

from __future__ import annotations

import pytest
import torch

from bloomchat.eval.backends import GenParams, HFBackend, cut_reply
from bloomchat.eval.chat import repeated_ngram_ratio, text_units
from bloomchat.eval.mc import MCTask, predict
from bloomchat.eval.metrics import evaluate, mean_metric, paired_delta, sacrebleu_metric

PAIRS = [
    ("Hello, how are", " you?"),
    ("北京是中国的", "首都，有很多名胜古迹。"),
    ("", "Bonjour, comment ça va ?"),  # empty context: scored after BOS
    ("def add(a, b):\n    return a + b\n<human>: a much longer context to force left padding", " x"),
]


@pytest.fixture(scope="module")
def backend(micro_model_dir):
    return HFBackend(str(micro_model_dir))


def _by_hand(model, tok, ctx: str, cont: str) -> tuple[float, int]:
    c = tok(ctx, add_special_tokens=False)["input_ids"] if ctx else []
    c = c or [tok.bos_token_id]
    t = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([c + t])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(c) - 1 + j, t[j]]) for j in range(len(t))), len(t)


def test_loglik_equals_hand_computation(backend):
    model, tok = backend._load()
    got = backend.loglik(PAIRS)  # one padded batch
    for (ctx, cont), (lp, n) in zip(PAIRS, got):
        want, want_n = _by_hand(model, tok, ctx, cont)
        assert n == want_n
        assert lp == pytest.approx(want, abs=1e-4)
        assert lp < 0


def test_loglik_batched_equals_one_at_a_time(backend):
    batched = backend.loglik(PAIRS)
    single = [backend.loglik([p])[0] for p in PAIRS]
    for (a, na), (b, nb) in zip(batched, single):
        assert na == nb and a == pytest.approx(b, abs=1e-4)


def test_loglik_truncates_context_from_the_left(micro_model_dir):
    b = HFBackend(str(micro_model_dir), max_length=8)
    model, tok = b._load()
    ctx, cont = "Hello, how are you? I am fine, thank you. How can I help", " you?"
    lp, n = b.loglik([(ctx, cont)])[0]
    c = tok(ctx, add_special_tokens=False)["input_ids"]
    t = tok(cont, add_special_tokens=False)["input_ids"]
    whole = (c + t)[-9:]  # max_length 8 inputs + 1 target
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0], -1)
    want = sum(float(logp[len(whole) - 1 - len(t) + j, t[j]]) for j in range(len(t)))
    assert n == len(t) and lp == pytest.approx(want, abs=1e-4)


def test_normalisations_pick_differently():
    rec = {"logprobs": [-6.0, -8.0], "ntokens": [2, 4], "nchars": [3, 16], "nbytes": [18, 16]}
    # sum: -6 > -8; mean: -3 < -2; char: -2 < -0.5; byte: -0.333 > -0.5
    assert [predict(rec, n) for n in ("sum", "mean", "char", "byte")] == [0, 1, 1, 0]
    assert predict({"logprobs": [-1.0, -1.0], "ntokens": [1, 1], "nchars": [1, 1], "nbytes": [1, 1]}, "sum") == 0


class CountingLoglik:
    """Scores a continuation by minus its length: the shortest choice wins under 'sum'."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def loglik(self, pairs):
        self.calls.append(len(pairs))
        return [(-float(len(cont)), max(1, len(cont) // 2)) for _, cont in pairs]


def test_mc_batch_is_one_scoring_call_and_accuracy_exact(tmp_path):
    import json

    f = tmp_path / "set.jsonl"
    rows = [
        {"context": "Q1", "choices": [" short", " much longer one"], "label": 0, "lang": "en"},
        {"context": "Q2", "choices": [" much longer one", " short"], "label": 0, "lang": "en"},
        {"context": ["A", "B", "C"], "choices": [" xx", " x", " xxx"], "label": 1, "lang": "zh"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = MCTask(str(f))
    be = CountingLoglik()
    recs = task.run_batch(be, task.examples())
    assert be.calls == [7]  # every option of the batch in one call
    assert [r["pred"]["sum"] for r in recs] == [0, 1, 1]
    summary = task.summarize(recs, bootstrap=0)
    assert summary["en"]["acc_sum"]["value"] == 0.5
    assert summary["zh"]["acc_sum"]["value"] == 1.0
    assert summary["all"]["acc_sum"]["value"] == pytest.approx(2 / 3)
    assert summary["zh"]["chance"]["value"] == pytest.approx(1 / 3)


def test_repetition_ratio():
    assert repeated_ngram_ratio("a b c d a b c d a b c d".split()) == pytest.approx(1 - 4 / 9)
    assert repeated_ngram_ratio("the quick brown fox jumps over the lazy dog".split()) == 0.0
    assert repeated_ngram_ratio(["a", "b"]) == 0.0
    assert text_units("北京 是首都", "zh") == list("北京是首都")
    assert text_units("北京是中国的首都。", None) == list("北京是中国的首都。")  # script decides when lang unknown
    assert text_units("hello big world", "en") == ["hello", "big", "world"]
    loop = "我很好。" * 20
    assert repeated_ngram_ratio(text_units(loop, "zh")) > 0.9


def test_cut_reply_stops_at_next_user_turn():
    assert cut_reply(" Bonjour !\n<human>: et toi ?") == "Bonjour !"
    assert cut_reply("  fine  ") == "fine"


def test_bleu_chrf_from_statistics_equal_sacrebleu():
    from sacrebleu.metrics import BLEU, CHRF

    recs = [{"hyp": "the cat sat on the mat", "ref": "the cat sat on the mat"},
            {"hyp": "a dog is running in the park", "ref": "the dog runs in the park"},
            {"hyp": "hello world", "ref": "hello there world"}]
    hyps, refs = [r["hyp"] for r in recs], [[r["ref"] for r in recs]]
    bleu = evaluate(sacrebleu_metric("bleu", lambda: BLEU(tokenize="13a")), recs, bootstrap=200)
    chrf = evaluate(sacrebleu_metric("chrf++", lambda: CHRF(word_order=2)), recs, bootstrap=200)
    assert bleu["value"] == pytest.approx(BLEU(tokenize="13a").corpus_score(hyps, refs).score)
    assert chrf["value"] == pytest.approx(CHRF(word_order=2).corpus_score(hyps, refs).score)
    assert bleu["ci95"][0] <= bleu["value"] <= bleu["ci95"][1]
    zh = [{"hyp": "我爱北京天安门", "ref": "我爱北京天安门"}]
    assert evaluate(sacrebleu_metric("bleu", lambda: BLEU(tokenize="zh")), zh)["value"] == pytest.approx(100.0)


def test_bootstrap_interval_of_a_proportion():
    recs = [{"ok": i < 30} for i in range(100)]
    m = mean_metric("acc", lambda r: r["ok"], percent=True)
    e = evaluate(m, recs, bootstrap=2000, seed=1)
    assert e["value"] == 0.3 and e["n"] == 100
    # normal approximation: 0.3 +- 1.96 * sqrt(0.21 / 100) = [0.210, 0.390]
    assert e["ci95"][0] == pytest.approx(0.21, abs=0.025) and e["ci95"][1] == pytest.approx(0.39, abs=0.025)
    assert evaluate(m, recs[:1])["ci95"] is None
    assert evaluate(m, [])["value"] is None


def test_paired_delta():
    m = mean_metric("acc", lambda r: r["ok"], percent=True)
    a = [{"ok": i % 2 == 0} for i in range(200)]
    same = paired_delta(m, a, a, bootstrap=500)
    assert same["delta"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_not_better"] == 1.0
    better = [{"ok": True} for _ in range(200)]
    d = paired_delta(m, a, better, bootstrap=500)
    assert d["delta"] == pytest.approx(0.5) and d["ci95"][0] > 0.4 and d["p_not_better"] == 0.0
    worse_is_good = mean_metric("rep", lambda r: r["ok"], higher_is_better=False)
    assert paired_delta(worse_is_good, a, better, bootstrap=200)["p_not_better"] == 1.0


def test_batched_greedy_generation_equals_one_at_a_time(backend):
    chats = [[{"role": "user", "content": "Hello"}],
             [{"role": "user", "content": "你好，请介绍一下北京。"}, {"role": "assistant", "content": "北京是首都。"},
              {"role": "user", "content": "还有呢？ Bonjour, comment ça va ?"}]]
    params = GenParams(max_new_tokens=8)
    batched = backend.generate(chats, params)
    single = [backend.generate([c], params)[0] for c in chats]
    assert [r.text for r in batched] == [r.text for r in single]
    for r in batched:
        assert r.new_tokens is not None and 0 <= r.new_tokens <= 8
        if r.hit_limit:
            assert r.new_tokens == 8


def test_guards_and_compare_charts_show_shares_on_0_to_100(tmp_path, monkeypatch):
    """Percent metrics are drawn on 0..100 even when every bar is 0 (no meaningless ±0.05 axis)."""
    from matplotlib.figure import Figure

    from bloomchat.eval.report import guards_chart

    seen = []
    real_savefig = Figure.savefig

    def spy(fig, *a, **kw):
        seen.extend(ax.get_ylim() for ax in fig.axes)
        return real_savefig(fig, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    zero = {"value": 0.0, "ci95": [0.0, 0.0], "n": 4}
    info = {m: {"percent": True, "higher_is_better": m == "in_lang"} for m in ("in_lang", "degenerate", "rep4")}
    entry = {"kind": "chat", "metric_info": info,
             "metrics": {g: {m: dict(zero) for m in info} for g in ("zh", "en", "all")}}
    out = guards_chart("chat-x.guards-on", entry, entry, tmp_path / "effect.png")
    assert out.exists() and len(seen) == 3
    assert all(lim == (0.0, 100.0) for lim in seen), seen
