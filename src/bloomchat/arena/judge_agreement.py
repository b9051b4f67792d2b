"""Can an LLM judge stand in for the arena's native speakers? Its verdicts beside their votes.

    bloomchat arena export-replies --systems base,stage2 --out pairs/     # pairs/<system>.jsonl
    bloomchat eval run JUDGE --task judge --data pairs/base.jsonl --data-b pairs/stage2.jsonl -o runs/judge
    bloomchat arena judge-agreement --judge runs/judge --out agreement/

Each human vote on (prompt, two systems) is paired with the judge's verdict on the same prompt
and systems (eval's judge task: both orders asked, a tie unless both agree). Outcomes are
lo / hi / tie (a "both bad" vote counts as a tie). Per language: the share of votes the judge
agrees with, and Cohen's kappa between the judge and the human votes (chance agreement from
each side's own outcome shares), both with 95% bootstrap intervals over prompts. A language
is named as one where the judge cannot stand in for native speakers when its kappa is below
0.4 (below "moderate", Landis & Koch 1977); with fewer than 20 paired votes it is named as
too few to tell. The raters' own agreement (Krippendorff's alpha on pairs seen twice) is shown
beside it: a judge cannot be expected to agree with people more than they agree among themselves.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from sqlalchemy import select

from bloomchat.arena.db import Assignment, Database, Prompt, Reply
from bloomchat.errors import BloomchatError

KAPPA_STAND_IN = 0.4
MIN_PAIRS = 20
LABELS = ("lo", "hi", "tie")


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa of two label lists: (p_o - p_e) / (1 - p_e); None when p_e == 1."""
    n = len(x)
    if n == 0:
        return None
    cats = sorted(set(x) | set(y))
    po = sum(a == b for a, b in zip(x, y)) / n
    pe = sum((x.count(c) / n) * (y.count(c) / n) for c in cats)
    return None if pe == 1 else (po - pe) / (1 - pe)


def human_votes(db: Database, langs: list[str] | None = None) -> list[dict]:
    with db.Session() as s:
        q = (select(Prompt.key, Prompt.lang, Assignment.system_lo, Assignment.system_hi, Assignment.outcome,
                    Assignment.rater_id)
             .join(Prompt, Prompt.id == Assignment.prompt_id).where(Assignment.outcome.is_not(None)))
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        return [{"key": k, "lang": lg, "lo": lo, "hi": hi, "outcome": "tie" if o == "both_bad" else o, "rater": r}
                for k, lg, lo, hi, o, r in s.execute(q).all()]


def judge_verdicts(run_dir: str | Path, task: str | None = None) -> list[dict]:
    """Records of a judge task of an eval run dir: id (prompt key), group, system_a/b, outcome."""
    run = Path(run_dir)
    res = run / "results.json"
    if not res.exists():
        raise BloomchatError("not an eval run dir (no results.json); make one with bloomchat eval run JUDGE "
                             "--task judge ...", where=str(run))
    tasks = json.loads(res.read_text(encoding="utf-8")).get("tasks", {})
    judged = [n for n, t in tasks.items() if t.get("kind") == "judge" and (task is None or n == task)]
    if not judged:
        raise BloomchatError(f"no judge task{' named ' + task if task else ''} in this run dir", where=str(res))
    out = []
    for name in judged:
        with (run / tasks[name]["examples_file"]).open(encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def paired_outcomes(votes: list[dict], verdicts: list[dict]) -> list[dict]:
    """One row per human vote whose prompt and pair of systems the judge saw: human and judge labels."""
    by = {}
    for v in verdicts:
        by[(v["id"], frozenset((v["system_a"], v["system_b"])))] = v
    rows = []
    for h in votes:
        v = by.get((h["key"], frozenset((h["lo"], h["hi"]))))
        if v is None:
            continue
        winner = {"a": v["system_a"], "b": v["system_b"]}.get(v["outcome"])
        judge = "tie" if winner is None else ("lo" if winner == h["lo"] else "hi")
        rows.append({"key": h["key"], "lang": h["lang"], "human": h["outcome"], "judge": judge})
    return rows


def _stats(rows: list[dict]) -> tuple[float | None, float | None]:
    if not rows:
        return None, None
    h, j = [r["human"] for r in rows], [r["judge"] for r in rows]
    return sum(a == b for a, b in zip(h, j)) / len(rows), cohen_kappa(h, j)


def agreement_by_lang(rows: list[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """{lang|all: {"n", "prompts", "agreement", "kappa", "agreement_ci95", "kappa_ci95"}}; intervals
    resample prompts (a prompt's votes stay together)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["lang"]].append(r)
    if len(groups) > 1:
        groups["all"] = list(rows)
    rng = np.random.default_rng(seed)
    out = {}
    for g, rs in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        agree, kappa = _stats(rs)
        by_prompt: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            by_prompt[r["key"]].append(r)
        keys = list(by_prompt)
        ci_a = ci_k = None
        if bootstrap and len(keys) > 1:
            sa, sk = [], []
            for idx in rng.integers(0, len(keys), size=(bootstrap, len(keys))):
                sample = [r for i in idx for r in by_prompt[keys[i]]]
                a, k = _stats(sample)
                sa.append(a)
                if k is not None:
                    sk.append(k)
            ci_a = [float(x) for x in np.percentile(sa, [2.5, 97.5])]
            ci_k = [float(x) for x in np.percentile(sk, [2.5, 97.5])] if sk else None
        out[g] = {"n": len(rs), "prompts": len(keys), "agreement": agree, "kappa": kappa,
                  "agreement_ci95": ci_a, "kappa_ci95": ci_k}
    return out


def verdict(table: dict) -> dict:
    """Languages where the judge cannot stand in (kappa < 0.4) and those with too few votes to tell."""
    langs = {g: v for g, v in table.items() if g != "all"}
    few = sorted(g for g, v in langs.items() if v["n"] < MIN_PAIRS)
    cannot = sorted(g for g, v in langs.items() if v["n"] >= MIN_PAIRS and (v["kappa"] is None or v["kappa"] < KAPPA_STAND_IN))
    return {"cannot_stand_in": cannot, "too_few_votes": few,
            "rule": f"kappa < {KAPPA_STAND_IN} (below moderate agreement); fewer than {MIN_PAIRS} paired votes: too few"}


def chart(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.8 * len(groups) + 2) * 2, 4.0))
    for ax, key, title in ((axes[0], "kappa", "Cohen's kappa, judge vs native speakers"),
                           (axes[1], "agreement", "share of votes the judge agrees with")):
        vals, lo, hi = [], [], []
        for g in groups:
            v, ci = table[g][key], table[g][f"{key}_ci95"]
            vals.append(np.nan if v is None else v)
            lo.append(0 if v is None or not ci else max(0.0, v - ci[0]))
            hi.append(0 if v is None or not ci else max(0.0, ci[1] - v))
        x = np.arange(len(groups))
        ax.bar(x, vals, yerr=[lo, hi], capsize=3, color="#4c72b0")
        ax.set_xticks(x, groups)
        if key == "kappa":
            ax.axhline(KAPPA_STAND_IN, color="#c44e52", ls="--", lw=1, label=f"kappa {KAPPA_STAND_IN}")
            ax.legend(fontsize=8)
        ax.set_ylim(min(0.0, np.nanmin(vals) if len(vals) and not np.all(np.isnan(vals)) else 0.0) - 0.05, 1.0)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("LLM judge vs arena votes per language, 95% bootstrap intervals over prompts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def judge_agreement(db: Database, judge_run: str | Path, out: str | Path | None = None, *,
                    task: str | None = None, langs: list[str] | None = None, bootstrap: int = 1000) -> dict:
    from bloomchat.arena.report import load_votes
    from bloomchat.arena.stats import agreement as rater_agreement

    rows = paired_outcomes(human_votes(db, langs), judge_verdicts(judge_run, task))
    if not rows:
        raise BloomchatError("no human vote is on a prompt and pair of systems the judge saw (the judge's prompt "
                             "ids must be the arena's: judge replies from `bloomchat arena export-replies`)",
                             where=str(judge_run))
    table = agreement_by_lang(rows, bootstrap=bootstrap)
    doc = {"by_lang": table, **verdict(table), "raters_among_themselves": rater_agreement(load_votes(db, langs)),
           "labels": "lo / hi / tie (both_bad counted as tie)", "paired_votes": len(rows)}
    if out:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "judge_agreement.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        chart(table, o / "judge_agreement.png")
        doc["files"] = [str(o / "judge_agreement.json"), str(o / "judge_agreement.png")]
    return doc


def export_replies(db: Database, systems: list[str], out: str | Path, langs: list[str] | None = None) -> dict:
    """<out>/<system>.jsonl for each system: {"prompt_id", "lang", "messages", "reply", "system"} on the
    prompts every named system answered (the input of eval's judge task)."""
    if len(systems) < 2:
        raise BloomchatError("name at least two systems, e.g. --systems base,stage2", where="--systems")
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    with db.Session() as s:
        q = select(Prompt, Reply).join(Reply, Reply.prompt_id == Prompt.id).where(Reply.system.in_(systems))
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        got: dict[int, dict] = defaultdict(dict)
        prompts = {}
        for p, r in s.execute(q).all():
            got[p.id][r.system] = r.text
            prompts[p.id] = p
    known = {x for d in got.values() for x in d}
    missing = [x for x in systems if x not in known]
    if missing:
        raise BloomchatError(f"no replies from {', '.join(missing)} in the arena", where="--systems")
    both = [pid for pid in sorted(got) if all(x in got[pid] for x in systems)]
    counts = {}
    for x in systems:
        with (o / f"{x}.jsonl").open("w", encoding="utf-8") as f:
            for pid in both:
                p = prompts[pid]
                turns = json.loads(p.turns_json)
                msgs = [{"role": "user" if t["role"] == "human" else "assistant", "content": t["text"]} for t in turns]
                f.write(json.dumps({"prompt_id": p.key, "lang": p.lang, "messages": msgs, "reply": got[pid][x],
                                    "system": x}, ensure_ascii=False) + "\n")
        counts[x] = len(both)
    return counts
