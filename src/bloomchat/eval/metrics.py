"""Metrics as per-example sufficient statistics, so bootstrap intervals cost one matrix product.

A metric turns the per-example records of a group into an (n, k) matrix of statistics and
the column sums into a score. Accuracy is the mean of one 0/1 column; corpus BLEU and chrF++
are sacrebleu's own sentence statistics summed (exactly what `corpus_score` computes).

Bootstrap (percentile, 95%): B resamples of the n examples, drawn as multinomial counts
(B x n), so a resample's statistics are `counts @ stats`. Comparing two runs on the same
examples uses the same counts for both (paired bootstrap), which is what makes a difference
between two checkpoints on a few hundred sentences meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: 1000 resamples: the 2.5/97.5 percentiles then sit on the 25th/975th value, stable to ~0.1 point
#: for accuracies on a few hundred examples.
DEFAULT_BOOTSTRAP = 1000


@dataclass
class Metric:
    """name; `stats(records) -> (n, k)`; `score(column sums, n) -> float`; percent: shown x100;
    higher_is_better None for descriptive numbers (reply length) with no better direction."""

    name: str
    stats: Callable[[Sequence[dict]], np.ndarray]
    score: Callable[[np.ndarray, int], float]
    higher_is_better: bool | None = True
    percent: bool = False


def mean_metric(name: str, value: Callable[[dict], float], *, percent: bool = False,
                higher_is_better: bool | None = True) -> Metric:
    """The mean of a per-example value (accuracy: a 0/1 value, percent=True)."""
    def stats(recs):
        return np.array([[float(value(r))] for r in recs], dtype=np.float64).reshape(len(recs), 1)

    return Metric(name, stats, lambda s, n: float(s[0] / n) if n else float("nan"),
                  higher_is_better=higher_is_better, percent=percent)


def sacrebleu_metric(name: str, make: Callable[[], object], hyp_key: str = "hyp", ref_key: str = "ref") -> Metric:
    """Corpus BLEU / chrF from sacrebleu sentence statistics (identical to `corpus_score`)."""
    def stats(recs):
        m = make()
        st = m._extract_corpus_statistics([r[hyp_key] for r in recs], [[r[ref_key] for r in recs]])
        return np.asarray(st, dtype=np.float64).reshape(len(recs), -1)

    def score(s, n):
        return float(make()._compute_score_from_stats([int(round(x)) for x in s]).score)

    return Metric(name, stats, score)


def resample_counts(n: int, b: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)


def evaluate(metric: Metric, recs: Sequence[dict], *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """{"value", "ci95": [lo, hi] | None, "n"} for one group of examples."""
    n = len(recs)
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    st = metric.stats(recs)
    value = metric.score(st.sum(0), n)
    if not np.isfinite(value):  # e.g. token counts a backend did not report
        return {"value": None, "ci95": None, "n": n}
    ci = None
    if bootstrap and n > 1:
        counts = resample_counts(n, bootstrap, seed)
        sums = counts @ st
        vals = np.array([metric.score(s, n) for s in sums])
        lo, hi = np.percentile(vals, [2.5, 97.5])
        ci = [float(lo), float(hi)]
    return {"value": float(value), "ci95": ci, "n": n}


#: Two-sided level at which compare calls a paired difference significant.
ALPHA = 0.05


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """McNemar's exact test for two systems' right/wrong outcomes on the same items: only the
    discordant items count (a right and b wrong: `a_only`; the reverse: `b_only`); under "no
    difference" b_only ~ Binomial(a_only + b_only, 1/2). Two-sided p = 2 * P(X <= min) capped at 1,
    computed with exact integers (no normal approximation, no continuity correction)."""
    from math import comb

    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    m = a_only + b_only
    if m == 0:
        p = 1.0
    else:
        tail = sum(comb(m, i) for i in range(min(a_only, b_only) + 1))
        p = min(1.0, 2 * tail / 2**m)
    return {"test": "mcnemar_exact", "a_only": a_only, "b_only": b_only, "p": float(p)}


def _binary(st: np.ndarray) -> bool:
    return st.ndim == 2 and st.shape[1] == 1 and bool(np.isin(st, (0.0, 1.0)).all())


def paired_delta(metric: Metric, recs_a: Sequence[dict], recs_b: Sequence[dict], *,
                 bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """score(b) - score(a) on the same examples (aligned lists), with a paired bootstrap 95% CI,
    the share of resamples where b is not better (a one-sided p-value), and a two-sided paired
    test: McNemar's exact test when every item's outcome is right/wrong (accuracy, exact match),
    else the paired bootstrap (p = twice the smaller tail of the resampled differences);
    `significant` when that p < ALPHA."""
    n = len(recs_a)
    assert n == len(recs_b)
    empty = {"delta": None, "ci95": None, "n": n, "p_not_better": None, "test": None, "p": None,
             "significant": None}
    if n == 0:
        return empty
    sa, sb = metric.stats(recs_a), metric.stats(recs_b)
    delta = metric.score(sb.sum(0), n) - metric.score(sa.sum(0), n)
    if not np.isfinite(delta):
        return empty
    out = {"delta": float(delta), "ci95": None, "n": n, "p_not_better": None, "test": None, "p": None,
           "significant": None}
    if _binary(sa) and _binary(sb):
        out.update(mcnemar_exact(sa[:, 0] == 1, sb[:, 0] == 1))
    if bootstrap and n > 1:
        counts = resample_counts(n, bootstrap, seed)
        da = np.array([metric.score(s, n) for s in counts @ sa])
        db = np.array([metric.score(s, n) for s in counts @ sb])
        lo, hi = np.percentile(db - da, [2.5, 97.5])
        out["ci95"] = [float(lo), float(hi)]
        if metric.higher_is_better is not None:
            d = db - da if metric.higher_is_better else da - db
            out["p_not_better"] = float(np.mean(d <= 0))
        if out["test"] is None:
            d = db - da
            out.update(test="paired_bootstrap",
                       p=float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))) if delta != 0 else 1.0)
    if out["p"] is not None:
        out["significant"] = out["p"] < ALPHA
    return out
