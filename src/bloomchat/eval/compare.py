"""`bloomchat eval compare RUN...`: runs side by side (e.g. base vs stage 1 vs stage 2).

Each run's numbers come with their own 95% bootstrap interval; each later run is also set
against the first (the baseline) on the examples both evaluated, by paired bootstrap: the
same resampled examples score both runs, so the interval is on the difference itself (much
narrower than two overlapping marginal intervals suggest), with the share of resamples in
which the run is not better (a one-sided p-value), and a two-sided paired test: McNemar's
exact test for right/wrong outcomes (accuracy, exact match), the paired bootstrap for the
rest (BLEU, chrF++, shares averaged over turns). A difference with p < 0.05 is marked * and
listed under "Significant differences".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from bloomchat.errors import BloomchatError
from bloomchat.eval.cache import read_examples, safe_name
from bloomchat.eval.metrics import DEFAULT_BOOTSTRAP, Metric, paired_delta
from bloomchat.eval.report import fmt, fmt_delta


def metrics_for(entry: dict, group: str) -> list[Metric]:
    kind, cfg = entry["kind"], entry.get("config", {})
    if kind == "translation":
        from bloomchat.eval.translation import translation_metrics

        return translation_metrics(group, cfg.get("bleu_tokenize"))
    if kind == "mc":
        from bloomchat.eval.mc import mc_metrics

        return [m for m in mc_metrics(cfg.get("primary_norm", "sum")) if m.name != "chance"]
    if kind == "chat":
        from bloomchat.eval.chat import chat_metrics

        return chat_metrics()
    if kind == "mgsm":
        from bloomchat.eval.mgsm import mgsm_metrics

        return mgsm_metrics()
    if kind == "fertility":
        from bloomchat.eval.fertility import fertility_metrics

        return fertility_metrics()
    raise BloomchatError(f"unknown task kind {kind!r}")


def _load_run(run: str | Path) -> dict:
    p = Path(run)
    f = p / "results.json"
    if not f.exists():
        raise BloomchatError("not a run dir (no results.json); make one with bloomchat eval MODEL ... -o DIR",
                             where=str(p))
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BloomchatError(f"results.json is not valid JSON ({e})", where=str(f)) from None


def _labels(runs: Sequence[str]) -> list[str]:
    names = [Path(r).resolve().name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(Path(r)) for r in runs]


def compare_runs(runs: Sequence[str], out_dir: str | Path | None = None, *,
                 bootstrap: int = DEFAULT_BOOTSTRAP) -> dict:
    """{"runs", "tasks": {task: {"values": {group: {metric: {run: m}}}, "deltas": {run: {group: {metric: d}}}}},
    "markdown"}; written to OUT/compare.{json,md} and OUT/compare_<task>.png when out_dir is given."""
    loaded = [_load_run(r) for r in runs]
    labels = _labels(runs)
    task_names: list[str] = []
    for res in loaded:
        for name in res.get("tasks", {}):
            if name not in task_names:
                task_names.append(name)
    if not task_names:
        raise BloomchatError("the runs hold no tasks", where=", ".join(runs))
    base_label = labels[0]
    out: dict = {"runs": {lab: {"dir": str(Path(r).resolve()), "model": res.get("model")}
                          for lab, r, res in zip(labels, runs, loaded)}, "baseline": base_label, "tasks": {}}
    md = [f"# Comparison: {' vs '.join(labels)}", "",
          f"Baseline for the paired differences: {base_label}. 95% bootstrap intervals in brackets.", ""]
    significant: list[str] = []
    for name in task_names:
        present = [(lab, r, res["tasks"][name]) for lab, r, res in zip(labels, runs, loaded) if name in res["tasks"]]
        first = present[0][2]
        info = first.get("metric_info", {})
        groups: list[str] = []
        for _, _, e in present:
            groups += [g for g in e["metrics"] if g not in groups]
        all_names = [m for m in info] or list(next(iter(first["metrics"].values())))
        # the tables show the headline metrics; compare.json holds every metric
        metric_names = [m for m in (first.get("chart_metrics") or all_names) if m in all_names]
        if first["kind"] == "chat":
            metric_names += [m for m in ("rep4", "hit_limit") if m in all_names and m not in metric_names]
        values = {g: {m: {lab: e["metrics"].get(g, {}).get(m) for lab, _, e in present} for m in all_names}
                  for g in groups}
        task_out = {"kind": first["kind"], "values": values, "deltas": {}, "metric_info": info,
                    "chart_metrics": first.get("chart_metrics") or metric_names[:2]}
        md.append(f"## {name} ({first['kind']})")
        md.append("")
        for m in metric_names:
            pct = info.get(m, {}).get("percent", False)
            md.append(f"**{m}{' (%)' if pct else ''}**")
            md.append("")
            md.append("| group | " + " | ".join(lab for lab, _, _ in present) + " |")
            md.append("|" + "---|" * (len(present) + 1))
            for g in groups:
                md.append(f"| {g} | " + " | ".join(fmt(values[g][m][lab], pct) for lab, _, _ in present) + " |")
            md.append("")
        # paired differences against the baseline, on the examples both runs scored
        if present[0][0] == base_label and len(present) > 1:
            base_recs = _records(present[0][1], present[0][2])
            for lab, r, e in present[1:]:
                if e.get("config", {}).get("data") != first.get("config", {}).get("data"):
                    continue
                recs = _records(r, e)
                deltas = {}
                for g in groups:
                    if g == "all":
                        a_ids = [i for i in base_recs if i in recs]
                    else:
                        a_ids = [i for i, x in base_recs.items() if x["group"] == g and i in recs]
                    if len(a_ids) < 2:
                        continue
                    a = [base_recs[i] for i in a_ids]
                    b = [recs[i] for i in a_ids]
                    deltas[g] = {m.name: paired_delta(m, a, b, bootstrap=bootstrap)
                                 for m in metrics_for(first, g if g != "all" else a[0]["group"])
                                 if m.name in metric_names}
                    if g == "all" and first["kind"] == "translation":
                        deltas.pop(g)
                task_out["deltas"][lab] = deltas
                if deltas:
                    names = list(next(iter(deltas.values())))
                    md.append(f"**{lab} minus {base_label}** (paired; p: two-sided, McNemar's exact test for "
                              f"right/wrong outcomes, else paired bootstrap; * p < 0.05)")
                    md.append("")
                    md.append("| group | n | " + " | ".join(names) + " |")
                    md.append("|" + "---|" * (len(names) + 2))
                    for g, row in deltas.items():
                        n = next(iter(row.values()))["n"]
                        cells = []
                        for mname in names:
                            d = row[mname]
                            pct = info.get(mname, {}).get("percent", False)
                            c = fmt_delta(d, pct)
                            if d.get("p") is not None:
                                c += f" p={d['p']:.3g}{' *' if d.get('significant') else ''}"
                                if d.get("test") == "mcnemar_exact":
                                    c += f" ({d['b_only']}:{d['a_only']})"
                            if d.get("significant"):
                                significant.append(f"{name} {g} {mname}: {lab} {fmt_delta(d, pct)} vs {base_label} "
                                                   f"(p={d['p']:.3g}, {d['test'].replace('_', ' ')})")
                            cells.append(c)
                        md.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
                    md.append("")
        out["tasks"][name] = task_out
    if len(loaded) > 1:
        md.append("## Significant differences (p < 0.05, paired)")
        md.append("")
        md.extend([f"- {x}" for x in significant] or ["- none: no paired difference reaches p < 0.05"])
        md.append("")
        md.append("McNemar cells show (items only the run got right : items only the baseline got right).")
    out["significant"] = significant
    out["markdown"] = "\n".join(md)
    if out_dir:
        from bloomchat.eval.report import _staged, commit_staged, drop_staged

        o = Path(out_dir)
        o.mkdir(parents=True, exist_ok=True)
        staged = [(_staged(o / n), o / n) for n in ["compare.md", "compare.json"] +
                  [f"compare_{safe_name(name)}.png" for name in out["tasks"]]]
        try:  # all files or none: a failure keeps the previous comparison intact
            staged[0][0].write_text(out["markdown"] + "\n", encoding="utf-8")
            staged[1][0].write_text(json.dumps({k: v for k, v in out.items() if k != "markdown"}, indent=2,
                                               ensure_ascii=False) + "\n", encoding="utf-8")
            for (tmp, _), (name, t) in zip(staged[2:], out["tasks"].items()):
                _chart(name, t, list(out["runs"]), tmp)
        except BaseException:
            drop_staged(staged)
            raise
        commit_staged(staged)
    return out


def _records(run_dir: str, entry: dict) -> dict[str, dict]:
    f = Path(run_dir) / entry["examples_file"]
    if not f.exists():
        raise BloomchatError("per-example file missing (needed for paired intervals)", where=str(f))
    return {r["id"]: r for r in read_examples(f)}


def _chart(name: str, task: dict, labels: list[str], path: Path, title: str | None = None) -> None:
    """Grouped bars: groups on x, one bar per run, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = task["chart_metrics"]
    groups = list(task["values"])
    runs = [lab for lab in labels if any(task["values"][g][metrics[0]].get(lab) for g in groups)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.9 * len(groups) * max(1, len(runs)) / 2 + 3), 3.2 * len(metrics)),
                             squeeze=False)
    width = 0.8 / max(1, len(runs))
    for ax, m in zip(axes[:, 0], metrics):
        k = 100.0 if task["metric_info"].get(m, {}).get("percent") else 1.0
        x = np.arange(len(groups))
        for j, lab in enumerate(runs):
            vals, lo, hi = [], [], []
            for g in groups:
                e = task["values"][g][m].get(lab) or {}
                v = e.get("value")
                vals.append(np.nan if v is None else v * k)
                ci = e.get("ci95") or [v, v]
                lo.append(0 if v is None else max(0.0, (v - ci[0]) * k))
                hi.append(0 if v is None else max(0.0, (ci[1] - v) * k))
            ax.bar(x + (j - (len(runs) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2, label=lab)
        ax.set_xticks(x, groups)
        ax.set_title(f"{m}{' (%)' if k == 100 else ''}", fontsize=10)
        if k == 100:  # shares on their full scale (all-zero bars otherwise get a -0.05..0.05 axis)
            ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"{name} ({task['kind']}): runs side by side, 95% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
