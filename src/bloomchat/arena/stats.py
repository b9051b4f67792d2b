"""Arena statistics from votes: preference shares with bootstrap intervals, Bradley-Terry, agreement.

How ties count (`tie_rule`):

* ``seed`` - BLOOMChat's way, "preferred in N% of comparisons": a system's share is its wins over
  *all* comparisons; tie and both-bad count as not preferred (so the two shares plus ties < 100%).
* ``half`` - a tie or both-bad gives each side half a win (the two shares add up to 100%).
* ``exclude`` - wins over decisive comparisons only (ties and both-bad dropped).

Intervals are 95% percentile bootstraps that resample *prompts* (the votes on one prompt are not
independent; Poisson bootstrap, see `_Bootstrap`): 2,000 resamples for shares and 1,000 refits
for Bradley-Terry, seeded, so the same votes always give the same intervals.
The Bradley-Terry fit is Hunter's (2004) MM algorithm in numpy (no scipy needed), with ties as
half wins and a weak prior of half a tie between every two systems so that a system that never
lost still gets a finite rating; ratings are on the Elo scale (mean 1000, 400 per factor 10 in odds).
Agreement: on pairs seen by 2+ raters, the share of rater pairs that chose the same outcome, and
Krippendorff's alpha (nominal; it allows a different number of raters per pair).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

TIE_RULES = {
    "seed": "share of all comparisons in which the system was preferred; tie and both-bad count as not "
            "preferred (BLOOMChat's 'preferred in N% of comparisons')",
    "half": "tie and both-bad count as half a win for each side",
    "exclude": "share of decisive comparisons only; tie and both-bad are left out",
}
ALL = "all"
N_BOOT = 2000  # share intervals: 2,000 resamples keep the 2.5/97.5 percentiles stable to ~0.5 point
N_BOOT_BT = 1000  # Bradley-Terry refits, all replicates in one vectorised MM loop


@dataclass(frozen=True)
class Vote:
    lang: str
    prompt_id: int
    lo: str  # the two systems, sorted by name
    hi: str
    outcome: str  # lo / hi / tie / both_bad
    rater_id: int


def _share(w, l, t, rule: str):
    """Share of the first side under a tie rule; arrays or scalars. NaN where undefined."""
    w, l, t = (np.asarray(x, dtype=float) for x in (w, l, t))
    with np.errstate(invalid="ignore", divide="ignore"):
        if rule == "seed":
            return w / (w + l + t)
        if rule == "half":
            return (w + 0.5 * t) / (w + l + t)
        if rule == "exclude":
            return w / (w + l)
    raise ValueError(f"unknown tie rule {rule!r}; choose from {', '.join(TIE_RULES)}")


class _Bootstrap:
    """One set of prompt resamples shared by every group, so all intervals come from the same replicates.

    Poisson bootstrap: in each replicate every prompt is drawn Poisson(1) times, which
    approximates drawing n prompts with replacement (multinomial(n, 1/n) counts ~ Poisson(1))
    and lets each group's totals be one matrix product.
    """

    def __init__(self, votes: list[Vote], seed: int, n_boot: int = N_BOOT):
        prompts = sorted({(v.lang, v.prompt_id) for v in votes})
        self.col = {p: i for i, p in enumerate(prompts)}
        self.weights = np.random.default_rng(seed).poisson(1.0, size=(n_boot, len(prompts))).astype(np.float64)

    def totals(self, rows: list[tuple]) -> np.ndarray:
        """rows of ((lang, prompt), win, loss, tie, both_bad) -> resampled totals, n_boot x 4."""
        by: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(4))
        for key, *v in rows:
            by[self.col[key]] += np.array(v, dtype=float)
        cols = np.fromiter(by.keys(), dtype=np.int64)
        return self.weights[:, cols] @ np.stack(list(by.values()))

    def ci(self, rows: list[tuple], rule: str, side: int = 0):
        """95% percentile interval of side 0's (or, side=1, the other side's) share."""
        tot = self.totals(rows)
        w, l = (0, 1) if side == 0 else (1, 0)
        s = _share(tot[:, w], tot[:, l], tot[:, 2] + tot[:, 3], rule)
        s = s[~np.isnan(s)]
        return [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))] if len(s) else [None, None]


def _nan_none(x):
    x = float(x)
    return None if np.isnan(x) else x


def pair_table(votes: list[Vote], rule: str = "seed", seed: int = 0) -> list[dict]:
    """One row per language (and 'all') and system pair: counts, both sides' shares with intervals."""
    _share(0, 0, 0, rule)  # validate the rule early
    boot = _Bootstrap(votes, seed)
    groups: dict[tuple[str, str, str], list[Vote]] = defaultdict(list)
    for v in votes:
        groups[(v.lang, v.lo, v.hi)].append(v)
        groups[(ALL, v.lo, v.hi)].append(v)
    out = []
    for (lang, a, b), vs in sorted(groups.items(), key=lambda kv: (kv[0][0] != ALL, kv[0])):
        c = Counter(v.outcome for v in vs)
        rows = [((v.lang, v.prompt_id), v.outcome == "lo", v.outcome == "hi", v.outcome == "tie", v.outcome == "both_bad")
                for v in vs]
        n = len(vs)
        a_ci, b_ci = boot.ci(rows, rule, 0), boot.ci(rows, rule, 1)
        out.append({
            "lang": lang, "system_a": a, "system_b": b, "n": n,
            "a_wins": c["lo"], "b_wins": c["hi"], "ties": c["tie"], "both_bad": c["both_bad"],
            "a_share": _nan_none(_share(c["lo"], c["hi"], c["tie"] + c["both_bad"], rule)),
            "a_ci": a_ci,
            "b_share": _nan_none(_share(c["hi"], c["lo"], c["tie"] + c["both_bad"], rule)),
            "b_ci": b_ci,
            "tie_share": (c["tie"] + c["both_bad"]) / n,
        })
    return out


def field_table(votes: list[Vote], rule: str = "seed", seed: int = 0) -> list[dict]:
    """Each system against all others pooled, per language and 'all' (BLOOMChat's 'against other models')."""
    boot = _Bootstrap(votes, seed + 1)
    groups: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for v in votes:
        for me, win in ((v.lo, "lo"), (v.hi, "hi")):
            lose = "hi" if win == "lo" else "lo"
            row = ((v.lang, v.prompt_id), v.outcome == win, v.outcome == lose, v.outcome == "tie", v.outcome == "both_bad")
            groups[(v.lang, me)].append(row)
            groups[(ALL, me)].append(row)
    out = []
    for (lang, system), rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != ALL, kv[0])):
        w, l, t, bb = (sum(r[i] for r in rows) for i in range(1, 5))
        out.append({
            "lang": lang, "system": system, "n": len(rows), "wins": w, "losses": l, "ties": t, "both_bad": bb,
            "share": _nan_none(_share(w, l, t + bb, rule)), "ci": boot.ci(rows, rule),
        })
    return out


def bradley_terry(wins: np.ndarray, prior: float = 0.5, iters: int = 500, tol: float = 1e-9) -> np.ndarray:
    """Strengths p (geometric mean 1) from wins[..., i, j] = times i beat j (ties as 0.5 each).

    MM update p_i = W_i / sum_j n_ij / (p_i + p_j) (Hunter 2004), on one k x k matrix or a stack
    of them at once (the bootstrap fits all replicates together). `prior` adds that many tied
    comparisons between every two systems, which keeps the fit finite and shrinks thin data.
    """
    wins = np.asarray(wins, dtype=float)
    k = wins.shape[-1]
    w = wins + prior / 2 * (1 - np.eye(k))
    n = w + np.swapaxes(w, -1, -2)
    W = w.sum(axis=-1)
    p = np.ones(wins.shape[:-1])
    for _ in range(iters):
        denom = (n / (p[..., :, None] + p[..., None, :])).sum(axis=-1)
        new = W / denom
        new /= np.exp(np.log(new).mean(axis=-1, keepdims=True))
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    return p


def _win_matrix(votes: list[Vote], index: dict[str, int]) -> np.ndarray:
    m = np.zeros((len(index), len(index)))
    for v in votes:
        i, j = index[v.lo], index[v.hi]
        if v.outcome == "lo":
            m[i, j] += 1
        elif v.outcome == "hi":
            m[j, i] += 1
        else:
            m[i, j] += 0.5
            m[j, i] += 0.5
    return m


def elo(p: np.ndarray) -> np.ndarray:
    return 1000 + 400 * np.log10(p)


def ranking(votes: list[Vote], seed: int = 0) -> dict[str, list[dict]]:
    """Bradley-Terry ranking per language and 'all', with 95% intervals from prompt-resampled refits."""
    rng = np.random.default_rng(seed + 2)
    groups: dict[str, list[Vote]] = defaultdict(list)
    for v in votes:
        groups[v.lang].append(v)
        groups[ALL].append(v)
    out = {}
    for lang in sorted(groups, key=lambda x: (x != ALL, x)):
        vs = groups[lang]
        systems = sorted({v.lo for v in vs} | {v.hi for v in vs})
        index = {s: i for i, s in enumerate(systems)}
        rating = elo(bradley_terry(_win_matrix(vs, index)))
        by_prompt: dict[tuple, list[Vote]] = defaultdict(list)
        for v in vs:
            by_prompt[(v.lang, v.prompt_id)].append(v)
        mats = np.stack([_win_matrix(pv, index) for pv in by_prompt.values()])  # prompts x k x k
        # a resample of prompts = how often each prompt is drawn; all replicates are fitted together
        draws = rng.poisson(1.0, size=(N_BOOT_BT, len(mats))).astype(np.float64)  # Poisson bootstrap of prompts
        boots = elo(bradley_terry(np.einsum("bp,pij->bij", draws, mats), tol=1e-7))
        lo, hi = np.percentile(boots, 2.5, axis=0), np.percentile(boots, 97.5, axis=0)
        rows = [{"system": s, "rating": float(rating[i]), "ci": [float(lo[i]), float(hi[i])],
                 "n": sum(1 for v in vs if s in (v.lo, v.hi))} for i, s in enumerate(systems)]
        rows.sort(key=lambda r: -r["rating"])
        for r, row in enumerate(rows, 1):
            row["rank"] = r
        out[lang] = rows
    return out


def agreement(votes: list[Vote]) -> dict[str, dict]:
    """Per language and 'all': pairs seen by 2+ raters, percent agreement and Krippendorff's alpha (nominal)."""
    units: dict[tuple, list[str]] = defaultdict(list)
    for v in votes:
        units[(v.lang, v.prompt_id, v.lo, v.hi)].append(v.outcome)
    out = {}
    for lang in sorted({ALL} | {u[0] for u in units}, key=lambda x: (x != ALL, x)):
        multi = [o for u, o in units.items() if len(o) >= 2 and (lang == ALL or u[0] == lang)]
        same = total = 0
        coinc: Counter = Counter()
        for outs in multi:
            m = len(outs)
            for a, b in itertools.permutations(range(m), 2):
                coinc[(outs[a], outs[b])] += 1 / (m - 1)
            for a, b in itertools.combinations(outs, 2):
                total += 1
                same += a == b
        n_c: Counter = Counter()
        for (c, _k), x in coinc.items():
            n_c[c] += x
        n = sum(n_c.values())
        alpha = None
        if n > 1:
            d_o = sum(x for (c, k), x in coinc.items() if c != k) / n
            d_e = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
            alpha = None if d_e == 0 else 1 - d_o / d_e
        out[lang] = {"pairs": len(multi), "ratings": sum(len(o) for o in multi),
                     "percent_agreement": (same / total) if total else None, "krippendorff_alpha": alpha}
    return out


def summarize(votes: list[Vote], rule: str = "seed", seed: int = 0) -> dict:
    """Everything the results page, the terminal table and the exports show."""
    by_lang = Counter(v.lang for v in votes)
    return {
        "tie_rule": {"name": rule, "description": TIE_RULES[rule]},
        "interval": "95% percentile bootstrap over prompts",
        "votes": len(votes),
        "votes_by_lang": dict(sorted(by_lang.items())),
        "pairs": pair_table(votes, rule, seed),
        "versus_field": field_table(votes, rule, seed),
        "ranking": ranking(votes, seed),
        "agreement": agreement(votes),
    }
