"""Results out of the arena: votes from the database, the terminal table (rich), CSV, JSON, PNG, HTML."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from bloomchat.arena.db import Assignment, Database, Prompt, Rater
from bloomchat.arena.stats import ALL, Vote, summarize

CSV_FIELDS = ["lang", "system_a", "system_b", "n", "a_wins", "b_wins", "ties", "both_bad",
              "a_share", "a_ci_low", "a_ci_high", "b_share", "b_ci_low", "b_ci_high", "tie_share"]


def load_votes(db: Database, langs: list[str] | None = None) -> list[Vote]:
    with db.Session() as s:
        q = (select(Prompt.lang, Assignment.prompt_id, Assignment.system_lo, Assignment.system_hi,
                    Assignment.outcome, Assignment.rater_id)
             .join(Prompt, Prompt.id == Assignment.prompt_id).where(Assignment.outcome.is_not(None)))
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        return [Vote(*row) for row in s.execute(q).all()]


def results(db: Database, rule: str = "seed", langs: list[str] | None = None, seed: int = 0) -> dict:
    """The full results document (what /api/results and results.json hold)."""
    votes = load_votes(db, langs)
    doc = summarize(votes, rule, seed)
    with db.Session() as s:
        names = dict(s.execute(select(Rater.id, Rater.name)).all())
    per_rater = Counter(names.get(v.rater_id, str(v.rater_id)) for v in votes)
    doc["votes_by_rater"] = dict(sorted(per_rater.items()))
    doc["generated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return doc


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "-" if not ci or ci[0] is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def pairs_csv(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in doc["pairs"]:
        row = {k: r[k] for k in CSV_FIELDS if k in r}
        row.update(a_ci_low=r["a_ci"][0], a_ci_high=r["a_ci"][1], b_ci_low=r["b_ci"][0], b_ci_high=r["b_ci"][1])
        w.writerow(row)
    return buf.getvalue()


def votes_rows(db: Database, langs: list[str] | None = None) -> list[dict]:
    """Every vote (in `langs`, when given) with its prompt and the revealed sides, for the raw export (admins only)."""
    with db.Session() as s:
        q = (select(Assignment, Prompt.key, Prompt.lang, Rater.name)
             .join(Prompt, Prompt.id == Assignment.prompt_id).join(Rater, Rater.id == Assignment.rater_id)
             .where(Assignment.outcome.is_not(None)).order_by(Assignment.id))
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        rows = s.execute(q).all()
    out = []
    for a, key, lang, rater in rows:
        winner = {"lo": a.system_lo, "hi": a.system_hi}.get(a.outcome)
        out.append({"vote_id": a.id, "prompt_id": key, "lang": lang, "rater": rater,
                    "left_system": a.left_system, "right_system": a.right_system, "choice": a.choice,
                    "winner": winner, "comment": a.comment or "", "voted_at": a.voted_at.isoformat() if a.voted_at else None})
    return out


def print_table(doc: dict, console=None) -> None:
    """The per-language preference table, ranking and agreement, in the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not doc["votes"]:
        console.print("no votes yet: add raters (`bloomchat arena add-rater NAME --langs zh`) and start "
                      "`bloomchat arena serve`")
        return
    console.print(f"[bold]{doc['votes']} votes[/bold]; ties: {doc['tie_rule']['description']}; intervals: {doc['interval']}")
    t = Table(title="Pairwise preference (share of comparisons in which each system was preferred)")
    for col in ("lang", "A", "B", "n", "A preferred [95% CI]", "B preferred [95% CI]", "tie/both bad"):
        t.add_column(col, justify="left" if col in ("lang", "A", "B") else "right", no_wrap=col in ("A", "B"))
    for r in doc["pairs"]:
        t.add_row(r["lang"], r["system_a"], r["system_b"], str(r["n"]), f"{_pct(r['a_share'])} {_ci(r['a_ci'])}",
                  f"{_pct(r['b_share'])} {_ci(r['b_ci'])}", _pct(r["tie_share"]))
    console.print(t)
    f = Table(title="Each system against all others")
    for col in ("lang", "system", "n", "preferred", "95% CI"):
        f.add_column(col)
    for r in doc["versus_field"]:
        f.add_row(r["lang"], r["system"], str(r["n"]), _pct(r["share"]), _ci(r["ci"]))
    console.print(f)
    rk = Table(title="Bradley-Terry ranking (Elo scale, 95% CI)")
    for col in ("lang", "rank", "system", "rating", "95% CI", "n"):
        rk.add_column(col)
    for lang, rows in doc["ranking"].items():
        for r in rows:
            rk.add_row(lang, str(r["rank"]), r["system"], f"{r['rating']:.0f}", f"[{r['ci'][0]:.0f}, {r['ci'][1]:.0f}]", str(r["n"]))
    console.print(rk)
    ag = Table(title="Agreement between raters (pairs seen by 2+ raters)")
    for col in ("lang", "pairs", "ratings", "% agreement", "Krippendorff alpha"):
        ag.add_column(col)
    for lang, a in doc["agreement"].items():
        alpha = "-" if a["krippendorff_alpha"] is None else f"{a['krippendorff_alpha']:.2f}"
        ag.add_row(lang, str(a["pairs"]), str(a["ratings"]), _pct(a["percent_agreement"]), alpha)
    console.print(ag)


def chart_png(doc: dict) -> bytes:
    """Two panels: each system's share against all others per language, and the BT ranking with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs = list(doc["ranking"].keys()) or [ALL]
    systems = sorted({r["system"] for r in doc["versus_field"]})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    if not systems:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no votes yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    else:
        width = 0.8 / len(systems)
        x = np.arange(len(langs))
        by = {(r["lang"], r["system"]): r for r in doc["versus_field"]}
        for i, s in enumerate(systems):
            vals, lo, hi = [], [], []
            for lg in langs:
                r = by.get((lg, s))
                v = r["share"] if r and r["share"] is not None else np.nan
                vals.append(100 * v)
                lo.append(max(0.0, 100 * (v - r["ci"][0])) if r and r["ci"][0] is not None else 0)
                hi.append(max(0.0, 100 * (r["ci"][1] - v)) if r and r["ci"][1] is not None else 0)
            ax1.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=[lo, hi], capsize=3, label=s)
        ax1.set_xticks(x, langs)
        ax1.set_ylabel("% of comparisons preferred")
        ax1.set_ylim(0, 100)
        ax1.set_title(f"Preferred against all others ({doc['tie_rule']['name']} ties), 95% CI")
        ax1.legend(fontsize=8)
        rows = doc["ranking"].get(ALL, [])[::-1]
        y = np.arange(len(rows))
        ax2.errorbar([r["rating"] for r in rows], y,
                     xerr=[[max(0.0, r["rating"] - r["ci"][0]) for r in rows], [max(0.0, r["ci"][1] - r["rating"]) for r in rows]],
                     fmt="o", capsize=4)
        ax2.set_yticks(y, [r["system"] for r in rows])
        ax2.axvline(1000, color="grey", lw=0.5)
        ax2.set_xlabel("Bradley-Terry rating (Elo scale)")
        ax2.set_title("Ranking, all languages, 95% CI")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_html(doc: dict, png: bytes) -> str:
    """A self-contained page (chart inline) for sharing results outside the arena."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['lang'])}</td><td>{e(r['system_a'])}</td><td>{e(r['system_b'])}</td><td>{r['n']}</td>"
        f"<td>{_pct(r['a_share'])} {_ci(r['a_ci'])}</td><td>{_pct(r['b_share'])} {_ci(r['b_ci'])}</td>"
        f"<td>{_pct(r['tie_share'])}</td></tr>" for r in doc["pairs"])
    rank = "".join(
        f"<tr><td>{e(lang)}</td><td>{r['rank']}</td><td>{e(r['system'])}</td><td>{r['rating']:.0f}</td>"
        f"<td>[{r['ci'][0]:.0f}, {r['ci'][1]:.0f}]</td></tr>" for lang, rs in doc["ranking"].items() for r in rs)
    agr = "".join(
        f"<tr><td>{e(lang)}</td><td>{a['pairs']}</td><td>{_pct(a['percent_agreement'])}</td><td>{_alpha(a)}</td></tr>"
        for lang, a in doc["agreement"].items())
    img = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bloomchat arena results</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>bloomchat arena results</h1>
<p>{doc['votes']} votes, generated {e(doc.get('generated_at', ''))}. Ties: {e(doc['tie_rule']['description'])}.
Intervals: {e(doc['interval'])}.</p>
<img alt="charts" src="data:image/png;base64,{img}" style="max-width:100%">
<h2>Pairwise preference</h2><table><tr><th>lang</th><th>A</th><th>B</th><th>n</th><th>A preferred [95% CI]</th>
<th>B preferred [95% CI]</th><th>tie / both bad</th></tr>{rows}</table>
<h2>Bradley-Terry ranking</h2><table><tr><th>lang</th><th>rank</th><th>system</th><th>rating</th><th>95% CI</th></tr>{rank}</table>
<h2>Agreement between raters</h2><table><tr><th>lang</th><th>pairs with 2+ raters</th><th>% agreement</th><th>Krippendorff alpha</th></tr>{agr}</table>
</body></html>"""


def _alpha(a: dict) -> str:
    return "-" if a["krippendorff_alpha"] is None else f"{a['krippendorff_alpha']:.2f}"


def write_all(db: Database, out: str | Path, rule: str = "seed", langs: list[str] | None = None) -> dict:
    """results.json, results.csv, votes.csv, votes.jsonl, chart.png, report.html under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = results(db, rule, langs)
    (out / "results.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "results.csv").write_text(pairs_csv(doc), encoding="utf-8")
    votes = votes_rows(db, langs)  # the same votes as results.json
    with (out / "votes.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(votes[0]) if votes else ["vote_id"], lineterminator="\n")
        w.writeheader()
        w.writerows(votes)
    with (out / "votes.jsonl").open("w", encoding="utf-8") as f:
        for v in votes:
            f.write(json.dumps(v, ensure_ascii=False) + "\n")
    png = chart_png(doc)
    (out / "chart.png").write_bytes(png)
    (out / "report.html").write_text(report_html(doc, png), encoding="utf-8")
    return doc
