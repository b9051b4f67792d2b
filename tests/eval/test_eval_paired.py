"""Paired tests in `eval compare` (McNemar exact, paired bootstrap) on known cases, and the
run dir's outputs moved into place only when a run succeeds."""

from __future__ import annotations

import json
from math import comb

import pytest

from bloomchat.eval.compare import compare_runs
from bloomchat.eval.mc import MCTask
from bloomchat.eval.metrics import mcnemar_exact, mean_metric, paired_delta
from bloomchat.eval.runner import run_eval


@pytest.mark.parametrize("a_only,b_only,want", [
    (1, 9, 2 * (comb(10, 0) + comb(10, 1)) / 2**10),  # 0.021484375
    (3, 5, 2 * (1 + 8 + 28 + 56) / 2**8),  # 0.7265625
    (0, 0, 1.0),
    (4, 4, 1.0),  # 2 * P(X <= 4 | 8) = 2 * 163/256 > 1: capped
    (0, 6, 2 / 2**6),
])
def test_mcnemar_exact_against_hand_computed_binomial(a_only, b_only, want):
    # items: a_only where only a is right, b_only where only b is, plus concordant ones that must not count
    a = [True] * a_only + [False] * b_only + [True] * 7 + [False] * 4
    b = [False] * a_only + [True] * b_only + [True] * 7 + [False] * 4
    got = mcnemar_exact(a, b)
    assert (got["a_only"], got["b_only"]) == (a_only, b_only)
    assert got["p"] == pytest.approx(want, rel=1e-12)


def test_mcnemar_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for a_only, b_only in [(1, 9), (3, 5), (12, 30)]:
        a = [True] * a_only + [False] * b_only
        b = [False] * a_only + [True] * b_only
        want = stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
        assert mcnemar_exact(a, b)["p"] == pytest.approx(want, rel=1e-9)


def test_paired_delta_picks_the_test_by_outcome_type():
    acc = mean_metric("acc", lambda r: r["ok"], percent=True)
    a = [{"ok": i < 5} for i in range(30)]
    b = [{"ok": i != 7} for i in range(30)]
    d = paired_delta(acc, a, b, bootstrap=200)
    assert d["test"] == "mcnemar_exact" and (d["a_only"], d["b_only"]) == (0, 24)
    assert d["p"] == pytest.approx(2 / 2**24) and d["significant"] is True
    assert d["delta"] == pytest.approx(24 / 30)
    same = paired_delta(acc, a, a, bootstrap=200)
    assert same["p"] == 1.0 and same["significant"] is False
    length = mean_metric("chars", lambda r: r["n"], higher_is_better=None)
    xs = [{"n": float(i % 7)} for i in range(40)]
    ys = [{"n": float(i % 7) + 3.0} for i in range(40)]  # every item +3: a sure difference
    d = paired_delta(length, xs, ys, bootstrap=200)
    assert d["test"] == "paired_bootstrap" and d["p"] == 0.0 and d["significant"] is True
    noise = [{"n": float(i % 7) + (0.5 if i % 2 else -0.5)} for i in range(40)]  # mean change 0
    d = paired_delta(length, xs, noise, bootstrap=200)
    assert d["test"] == "paired_bootstrap" and d["significant"] is False


class RightOn:
    """A fake scorer that prefers the right choice (" right") on the items in `right`."""

    name = "fake"

    def __init__(self, tag: str, right: set[int]):
        self.tag, self.right = tag, right

    def describe(self):
        return {"backend": "fake", "model": self.tag, "base_url": None}

    def loglik(self, pairs):
        out = []
        for ctx, cont in pairs:
            i = int(ctx[1:])
            good = (cont == " right") == (i in self.right)
            out.append((-1.0 if good else -2.0, 1))
        return out


def _mc_file(tmp_path, n=30):
    f = tmp_path / "set.jsonl"
    f.write_text("".join(json.dumps({"context": f"Q{i}", "choices": [" right", " wrong"], "label": 0, "lang": "en"})
                         + "\n" for i in range(n)), encoding="utf-8")
    return f


def test_compare_reports_mcnemar_and_names_the_significant_difference(tmp_path):
    f = _mc_file(tmp_path)
    run_eval([MCTask(str(f), name="mc")], RightOn("base", set(range(5))), tmp_path / "base", progress=False,
             bootstrap=100)
    run_eval([MCTask(str(f), name="mc")], RightOn("tuned", set(range(30)) - {7}), tmp_path / "tuned",
             progress=False, bootstrap=100)
    out = compare_runs([str(tmp_path / "base"), str(tmp_path / "tuned")], tmp_path / "cmp", bootstrap=100)
    d = out["tasks"]["mc"]["deltas"]["tuned"]["en"]["acc_sum"]
    assert d["test"] == "mcnemar_exact" and d["b_only"] == 24 and d["a_only"] == 0 and d["significant"]
    assert any("acc_sum" in s and "tuned" in s for s in out["significant"])
    md = (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")
    assert "Significant differences" in md and "(24:0)" in md
    # a run against itself: nothing significant
    same = compare_runs([str(tmp_path / "base"), str(tmp_path / "base")], None, bootstrap=100)
    assert same["significant"] == []


def _outputs(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "examples" not in p.parts}


def test_failing_second_run_leaves_outputs_byte_identical(tmp_path, monkeypatch):
    import bloomchat.eval.report as report

    f = _mc_file(tmp_path, 6)
    run = tmp_path / "run"
    be = RightOn("m", {0, 1, 2})
    run_eval([MCTask(str(f), name="first")], be, run, progress=False, bootstrap=50)
    before = _outputs(run)
    assert {"results.json", "results.md", "charts/first.png"} <= set(before)

    real_chart = report.chart

    def failing_chart(name, entry, path, title=None):
        if name == "second":
            raise RuntimeError("disk full while drawing")
        return real_chart(name, entry, path, title)

    monkeypatch.setattr(report, "chart", failing_chart)
    with pytest.raises(RuntimeError):
        run_eval([MCTask(str(f), name="second")], be, run, progress=False, bootstrap=50)
    assert _outputs(run) == before  # no half-written report, no temporary files left

    class Broken(RightOn):
        def loglik(self, pairs):
            raise RuntimeError("model crashed")

    monkeypatch.setattr(report, "chart", real_chart)
    with pytest.raises(RuntimeError):
        run_eval([MCTask(str(f), name="third")], Broken("m", set()), run, progress=False, bootstrap=50)
    assert _outputs(run) == before
