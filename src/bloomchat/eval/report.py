"""results.json, a Markdown table per task and a PNG chart per task, from the numbers only."""

from __future__ import annotations

import json
from pathlib import Path

from bloomchat.eval.cache import safe_name


def _fmt(d: dict | None, key: str, percent: bool, spec: str) -> str:
    if not d or d.get(key) is None:
        return "-"
    k = 100.0 if percent else 1.0
    s = format(d[key] * k, spec)
    if d.get("ci95"):
        lo, hi = (format(x * k, spec) for x in d["ci95"])
        s += f" [{lo}, {hi}]"
    return s


def fmt(m: dict | None, percent: bool) -> str:
    """'41.3 [38.0, 44.9]' (percent metrics x100); '-' when absent."""
    return _fmt(m, "value", percent, ".1f")


def task_table(name: str, entry: dict) -> str:
    info = entry.get("metric_info", {})
    groups = list(entry["metrics"])
    names = list(info) or list(next(iter(entry["metrics"].values())))
    head = "| group | n | " + " | ".join(n + (" (%)" if info.get(n, {}).get("percent") else "") for n in names) + " |"
    lines = [f"### {name} ({entry['kind']})", "", head, "|" + "---|" * (len(names) + 2)]
    for g in groups:
        row = entry["metrics"][g]
        n = next((v["n"] for v in row.values() if v), 0)
        lines.append(f"| {g} | {n} | " + " | ".join(fmt(row.get(m), info.get(m, {}).get("percent", False))
                                                  for m in names) + " |")
    lines.append("")
    lines.append("95% bootstrap intervals in brackets.")
    if entry.get("off_language_replies"):
        lines.append("")
        lines.append("Languages of off-language replies: " + "; ".join(
            f"{g}: " + ", ".join(f"{k} {v}" for k, v in sorted(row.items(), key=lambda kv: -kv[1]))
            for g, row in entry["off_language_replies"].items()))
    if entry.get("guard_events"):
        lines.append("")
        lines.append("Guard events: " + ", ".join(f"{k} {v}" for k, v in entry["guard_events"].items()))
    if entry.get("guards_effect"):
        lines.append("")
        lines.append(delta_table(f"What the guards change (guards on minus {entry['guards_effect']['versus']}, "
                                 "paired bootstrap)", entry["guards_effect"]["deltas"], info))
    if entry.get("length_controlled_a_score"):
        sy = entry.get("systems", {})
        lines.append("")
        lines.append(f"A = {sy.get('a')}, B = {sy.get('b')}; both orders asked, outcome = the verdict both agree on, "
                     f"else tie ({entry.get('unparsed_verdicts', 0)} verdicts unparsed). Length-controlled a_score "
                     "(%, at equal reply lengths): " + "; ".join(
                         f"{g}: {fmt(v, True)}" for g, v in entry["length_controlled_a_score"].items()))
    if entry.get("units"):
        lines.append("")
        lines.append("Fertility units: " + ", ".join(f"{g} tokens/{u}" for g, u in entry["units"].items()))
    if entry.get("signatures"):
        lines.append("")
        lines.append("sacrebleu signatures: " + "; ".join(
            f"{g}: BLEU `{s['bleu']}`, chrF++ `{s['chrf++']}`" for g, s in entry["signatures"].items()))
    return "\n".join(lines) + "\n"


def fmt_delta(d: dict | None, percent: bool) -> str:
    """'+2.1 [+0.4, +3.9]' (signed); '-' when absent."""
    return _fmt(d, "delta", percent, "+.1f")


def delta_table(title: str, deltas: dict, info: dict) -> str:
    """Rows = groups, columns = metrics, cells = difference [95% paired interval]."""
    names = list(next(iter(deltas.values()))) if deltas else []
    lines = [f"**{title}**", "", "| group | n | " + " | ".join(
        n + (" (pts)" if info.get(n, {}).get("percent") else "") for n in names) + " |", "|" + "---|" * (len(names) + 2)]
    for g, row in deltas.items():
        n = next((v["n"] for v in row.values() if v), 0)
        lines.append(f"| {g} | {n} | " + " | ".join(fmt_delta(row.get(m), info.get(m, {}).get("percent", False))
                                                  for m in names) + " |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    model = results.get("model", {})
    out = [f"# Evaluation of {model.get('model')}", "",
           f"backend {model.get('backend')}, bloomchat {results.get('bloomchat_version')}, "
           f"updated {results.get('updated')}", ""]
    for name, entry in results.get("tasks", {}).items():
        out.append(task_table(name, entry))
    return "\n".join(out)


def chart(name: str, entry: dict, path: Path, title: str | None = None) -> Path:
    """Bars per group for each chart metric, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    info = entry.get("metric_info", {})
    metrics = entry.get("chart_metrics") or list(info)[:3]
    groups = [g for g in entry["metrics"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.7 * len(groups) + 2.0) * len(metrics), 4.0),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        k = 100.0 if info.get(m, {}).get("percent") else 1.0
        vals, lo, hi = [], [], []
        for g in groups:
            e = entry["metrics"][g].get(m) or {}
            v = e.get("value")
            vals.append(np.nan if v is None else v * k)
            ci = e.get("ci95") or [v, v]
            lo.append(0 if v is None or ci[0] is None else max(0.0, (v - ci[0]) * k))
            hi.append(0 if v is None or ci[1] is None else max(0.0, (ci[1] - v) * k))
        x = np.arange(len(groups))
        ax.bar(x, vals, yerr=[lo, hi], capsize=3, color="#4c72b0")
        ax.set_xticks(x, groups, rotation=45 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
        hib = info.get(m, {}).get("higher_is_better", True)
        better = "" if hib is None else " - higher is better" if hib else " - lower is better"
        ax.set_title(f"{m}{' (%)' if k == 100 else ''}{better}", fontsize=10)
        if k == 100:
            ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"{name} ({entry['kind']}), 95% bootstrap intervals", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def staged_path(final: Path) -> Path:
    """A temporary name beside `final` (same folder: the rename is atomic), same suffix for savefig."""
    return final.with_name(f".{final.stem}.tmp{final.suffix}")


def commit_staged(pairs: list[tuple[Path, Path]]) -> None:
    for tmp, final in pairs:
        tmp.replace(final)


def drop_staged(pairs: list[tuple[Path, Path]]) -> None:
    for tmp, _ in pairs:
        tmp.unlink(missing_ok=True)


def write_report(run_dir: str | Path, results: dict) -> None:
    """results.json, results.md and the charts, each written to a temporary file first and all
    moved into place only once every one of them was made: a run that fails while reporting
    leaves the previous outputs byte for byte as they were."""
    run = Path(run_dir)
    staged: list[tuple[Path, Path]] = []

    def stage(final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.append((staged_path(final), final))
        return staged[-1][0]

    try:
        stage(run / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
        stage(run / "results.md").write_text(markdown(results), encoding="utf-8")
        for name, entry in results.get("tasks", {}).items():
            model = results.get("model", {}).get("model")
            chart(name, entry, stage(run / "charts" / f"{safe_name(name)}.png"),
                  title=f"{name} ({entry['kind']}) - {Path(str(model)).name}, 95% bootstrap intervals")
            off = results["tasks"].get((entry.get("guards_effect") or {}).get("versus", ""))
            if off:
                guards_chart(name, off, entry, stage(run / "charts" / f"{safe_name(name)}.effect.png"))
    except BaseException:
        drop_staged(staged)
        raise
    commit_staged(staged)


def guards_chart(name: str, off: dict, on: dict, path: Path) -> Path:
    """Guards off vs on, side by side per language (the same prompts, the same engine)."""
    metrics = ["in_lang", "degenerate", "rep4"]
    groups = list(on["metrics"])
    values = {g: {m: {"guards off": off["metrics"].get(g, {}).get(m), "guards on": on["metrics"][g].get(m)}
                  for m in metrics} for g in groups}
    runs_chart(name, {"kind": "chat", "values": values, "chart_metrics": metrics,
                      "metric_info": on.get("metric_info", {})},
               ["guards off", "guards on"], path,
               title=f"{name.replace('.guards-on', '')}\nwhat the guards change (same prompts and seeds), 95% intervals")
    return path


def runs_chart(name: str, task: dict, labels: list[str], path: Path, title: str | None = None) -> None:
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
