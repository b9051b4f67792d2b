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
from bloomchat.eval.report import commit_staged, drop_staged, fmt, fmt_delta, runs_chart, staged_path


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
    if kind == "judge":
        from bloomchat.eval.judge import judge_metrics

        return judge_metrics()
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


def _task_names(loaded: list[dict], runs: Sequence[str]) -> list[str]:
    """Every task any run holds, in first-seen order."""
    task_names: list[str] = []
    for res in loaded:
        for name in res.get("tasks", {}):
            if name not in task_names:
                task_names.append(name)
    if not task_names:
        raise BloomchatError("the runs hold no tasks", where=", ".join(runs))
    return task_names


def _task_values(present: list[tuple]) -> tuple[list[str], list[str], dict]:
    """(groups, headline metric names, {group: {metric: {run: m}}}) of one task over the runs holding it."""
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
    return groups, metric_names, values


def _values_markdown(present: list[tuple], groups: list[str], metric_names: list[str], values: dict,
                     info: dict) -> list[str]:
    """One table per headline metric: groups down, runs across."""
    md = []
    for m in metric_names:
        pct = info.get(m, {}).get("percent", False)
        md.append(f"**{m}{' (%)' if pct else ''}**")
        md.append("")
        md.append("| group | " + " | ".join(lab for lab, _, _ in present) + " |")
        md.append("|" + "---|" * (len(present) + 1))
        for g in groups:
            md.append(f"| {g} | " + " | ".join(fmt(values[g][m][lab], pct) for lab, _, _ in present) + " |")
        md.append("")
    return md


def _paired_deltas(base: tuple, other: tuple, groups: list[str], metric_names: list[str],
                   bootstrap: int) -> dict:
    """{group: {metric: paired delta}} of `other` minus `base`, on the examples both runs scored."""
    first = base[2]
    base_recs = _records(base[1], base[2])
    recs = _records(other[1], other[2])
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
    return deltas


def _delta_cell(d: dict, pct: bool) -> str:
    c = fmt_delta(d, pct)
    if d.get("p") is not None:
        c += f" p={d['p']:.3g}{' *' if d.get('significant') else ''}"
        if d.get("test") == "mcnemar_exact":
            c += f" ({d['b_only']}:{d['a_only']})"
    return c


def _deltas_markdown(name: str, lab: str, base_label: str, deltas: dict, info: dict,
                     significant: list[str]) -> list[str]:
    """The paired-difference table of one run against the baseline; significant ones are added to `significant`."""
    names = list(next(iter(deltas.values())))
    md = [f"**{lab} minus {base_label}** (paired; p: two-sided, McNemar's exact test for "
          f"right/wrong outcomes, else paired bootstrap; * p < 0.05)", "",
          "| group | n | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for g, row in deltas.items():
        n = next(iter(row.values()))["n"]
        cells = []
        for mname in names:
            d = row[mname]
            pct = info.get(mname, {}).get("percent", False)
            if d.get("significant"):
                significant.append(f"{name} {g} {mname}: {lab} {fmt_delta(d, pct)} vs {base_label} "
                                   f"(p={d['p']:.3g}, {d['test'].replace('_', ' ')})")
            cells.append(_delta_cell(d, pct))
        md.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    md.append("")
    return md


def _compare_task(name: str, present: list[tuple], base_label: str, bootstrap: int,
                  significant: list[str]) -> tuple[dict, list[str]]:
    """One task's compare.json entry and Markdown section."""
    first = present[0][2]
    info = first.get("metric_info", {})
    groups, metric_names, values = _task_values(present)
    task_out = {"kind": first["kind"], "values": values, "deltas": {}, "metric_info": info,
                "chart_metrics": first.get("chart_metrics") or metric_names[:2]}
    md = [f"## {name} ({first['kind']})", ""]
    md += _values_markdown(present, groups, metric_names, values, info)
    # paired differences against the baseline, on the examples both runs scored
    if present[0][0] == base_label and len(present) > 1:
        for other in present[1:]:
            if other[2].get("config", {}).get("data") != first.get("config", {}).get("data"):
                continue
            deltas = _paired_deltas(present[0], other, groups, metric_names, bootstrap)
            task_out["deltas"][other[0]] = deltas
            if deltas:
                md += _deltas_markdown(name, other[0], base_label, deltas, info, significant)
    return task_out, md


def _write_compare(out: dict, out_dir: str | Path) -> None:
    """compare.md, compare.json and a chart per task: all files or none, so a failure keeps the previous
    comparison intact."""
    o = Path(out_dir)
    o.mkdir(parents=True, exist_ok=True)
    staged = [(staged_path(o / n), o / n) for n in ["compare.md", "compare.json"] +
              [f"compare_{safe_name(name)}.png" for name in out["tasks"]]]
    try:
        staged[0][0].write_text(out["markdown"] + "\n", encoding="utf-8")
        staged[1][0].write_text(json.dumps({k: v for k, v in out.items() if k != "markdown"}, indent=2,
                                           ensure_ascii=False) + "\n", encoding="utf-8")
        for (tmp, _), (name, t) in zip(staged[2:], out["tasks"].items()):
            runs_chart(name, t, list(out["runs"]), tmp)
    except BaseException:
        drop_staged(staged)
        raise
    commit_staged(staged)


def compare_runs(runs: Sequence[str], out_dir: str | Path | None = None, *,
                 bootstrap: int = DEFAULT_BOOTSTRAP) -> dict:
    """{"runs", "tasks": {task: {"values": {group: {metric: {run: m}}}, "deltas": {run: {group: {metric: d}}}}},
    "markdown"}; written to OUT/compare.{json,md} and OUT/compare_<task>.png when out_dir is given."""
    loaded = [_load_run(r) for r in runs]
    labels = _labels(runs)
    task_names = _task_names(loaded, runs)
    base_label = labels[0]
    out: dict = {"runs": {lab: {"dir": str(Path(r).resolve()), "model": res.get("model")}
                          for lab, r, res in zip(labels, runs, loaded)}, "baseline": base_label, "tasks": {}}
    md = [f"# Comparison: {' vs '.join(labels)}", "",
          f"Baseline for the paired differences: {base_label}. 95% bootstrap intervals in brackets.", ""]
    significant: list[str] = []
    for name in task_names:
        present = [(lab, r, res["tasks"][name]) for lab, r, res in zip(labels, runs, loaded) if name in res["tasks"]]
        out["tasks"][name], task_md = _compare_task(name, present, base_label, bootstrap, significant)
        md += task_md
    if len(loaded) > 1:
        md.append("## Significant differences (p < 0.05, paired)")
        md.append("")
        md.extend([f"- {x}" for x in significant] or ["- none: no paired difference reaches p < 0.05"])
        md.append("")
        md.append("McNemar cells show (items only the run got right : items only the baseline got right).")
    out["significant"] = significant
    out["markdown"] = "\n".join(md)
    if out_dir:
        _write_compare(out, out_dir)
    return out


def _records(run_dir: str, entry: dict) -> dict[str, dict]:
    f = Path(run_dir) / entry["examples_file"]
    if not f.exists():
        raise BloomchatError("per-example file missing (needed for paired intervals)", where=str(f))
    return {r["id"]: r for r in read_examples(f)}
