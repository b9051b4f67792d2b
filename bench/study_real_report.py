"""Tables, charts and README of bench/study_real_smollm2.py (kept apart: the study runs, this writes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# the metrics the table shows, per task kind (eval's names); all of them are in study.json
HEADLINE = {"chat": ["in_lang", "rep4", "empty", "degenerate"], "translation": ["chrf++", "chrf", "bleu"],
            "mc": ["acc", "accuracy"]}
FOCUS = ("zh", "fr")


def _v(m):
    return None if m is None else m.get("value")


def _ci(m):
    ci = (m or {}).get("ci95") or [None, None]
    return ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]


def _fmt(m, pct=False):
    if m is None or m.get("value") is None:
        return "-"
    k = 100.0 if pct else 1.0
    lo, hi = _ci(m)
    s = f"{m['value'] * k:.1f}" if pct else f"{m['value']:.3f}"
    if lo is not None:
        s += f" [{lo * k:.1f}, {hi * k:.1f}]" if pct else f" [{lo:.3f}, {hi:.3f}]"
    return s


def _load(run: Path) -> dict:
    return json.loads((run / "results.json").read_text(encoding="utf-8"))


def _pct(info: dict, task: dict, metric: str) -> bool:
    mi = (task.get("metric_info") or {}).get(metric) or {}
    return bool(mi.get("percent", metric in ("in_lang", "rep4", "empty", "degenerate", "acc", "accuracy",
                                             "hit_limit")))


def eval_rows(base: dict, tuned: dict, cmp: dict | None) -> list[dict]:
    rows = []
    for tname, tb in base.get("tasks", {}).items():
        tt = tuned.get("tasks", {}).get(tname)
        if tt is None:
            continue
        kind = tb.get("kind", "")
        for group, mets in tb.get("metrics", {}).items():
            wanted = [m for m in HEADLINE.get(kind, []) if m in mets]
            if kind == "translation":
                wanted = wanted[:1]
            if kind == "mc":
                wanted = wanted[:1] or [next(iter(mets))]
            for metric in wanted:
                mb, mt = mets[metric], tt.get("metrics", {}).get(group, {}).get(metric)
                d = (((cmp or {}).get("tasks", {}).get(tname, {}).get("deltas", {}) or {}).get("tuned", {})
                     .get(group, {}).get(metric))
                pct = metric in ("in_lang", "rep4", "empty", "degenerate", "acc", "accuracy")
                rows.append({"task": tname, "kind": kind, "group": group, "metric": metric, "percent": pct,
                             "base": mb, "tuned": mt, "delta": d})
    return rows


def _overlap(a, b) -> bool | None:
    la, ha = _ci(a)
    lb, hb = _ci(b)
    if None in (la, ha, lb, hb):
        return None
    return not (ha < lb or hb < la)


def targets(dev: dict, rows: list[dict]) -> list[dict]:
    out = []
    stage2 = dev.get("stage2-oasst-dolly", {})
    for lg in FOCUS:
        d = stage2.get(lg)
        if d is None:
            out.append({"target": f"{lg} dev loss >= 10% lower", "met": False, "measured": "no dev conversations"})
            continue
        rel = d["rel_change"]
        out.append({"target": f"{lg} dev loss >= 10% lower (stage-2 held-out conversations)",
                    "met": rel["value"] <= -0.10,
                    "measured": f"{d['base']['value']:.3f} -> {d['tuned']['value']:.3f} "
                                f"({rel['value'] * 100:+.1f}%, 95% CI [{rel['ci95'][0] * 100:+.1f}, {rel['ci95'][1] * 100:+.1f}]%, "
                                f"{d['conversations']} conversations)"})
    for lg in FOCUS:
        r = next((r for r in rows if r["kind"] == "chat" and r["metric"] == "in_lang" and r["group"] == lg), None)
        if r is None:
            out.append({"target": f"{lg} in-language rate, non-overlapping 95% intervals", "met": False,
                        "measured": "not measured"})
            continue
        ov = _overlap(r["base"], r["tuned"])
        better = (_v(r["tuned"]) or 0) > (_v(r["base"]) or 0)
        out.append({"target": f"{lg} in-language rate ahead, non-overlapping 95% intervals",
                    "met": bool(better and ov is False),
                    "measured": f"base {_fmt(r['base'], True)} vs tuned {_fmt(r['tuned'], True)}"})
    return out


def markdown(meta: dict, dev: dict, rows: list[dict], tg: list[dict]) -> str:
    L = ["## Dev loss per language (held-out conversations, loss per bot token; 95% bootstrap over conversations)", "",
         "| stage dev split | lang | convs | base | tuned | change |", "|---|---|---|---|---|---|"]
    for stage, langs in dev.items():
        for lg, d in langs.items():
            rel = d["rel_change"]
            L.append(f"| {stage} | {lg} | {d['conversations']} | {_fmt(d['base'])} | {_fmt(d['tuned'])} | "
                     f"{rel['value'] * 100:+.1f}% [{rel['ci95'][0] * 100:+.1f}, {rel['ci95'][1] * 100:+.1f}] |")
    L += ["", "## bloomchat eval (same runs; 95% bootstrap intervals; p: eval compare's paired test)", "",
          "| task | group | metric | base | tuned | p |", "|---|---|---|---|---|---|"]
    for r in rows:
        p = (r["delta"] or {}).get("p")
        L.append(f"| {r['task']} | {r['group']} | {r['metric']} | {_fmt(r['base'], r['percent'])} | "
                 f"{_fmt(r['tuned'], r['percent'])} | {'-' if p is None else f'{p:.3f}'} |")
    L += ["", "## The issue's targets", "", "| target | met | measured |", "|---|---|---|"]
    for t in tg:
        L.append(f"| {t['target']} | {'yes' if t['met'] else 'NO'} | {t['measured']} |")
    return "\n".join(L)


def charts(out: Path, dev: dict, rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    cdir = out / "charts"
    cdir.mkdir(parents=True, exist_ok=True)
    for stage, langs in dev.items():
        labels = [lg for lg in langs if lg != "all"]
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 3.6))
        for j, who in enumerate(("base", "tuned")):
            vals = [langs[lg][who]["value"] for lg in labels]
            err = [[v - langs[lg][who]["ci95"][0] for lg, v in zip(labels, vals)],
                   [langs[lg][who]["ci95"][1] - v for lg, v in zip(labels, vals)]]
            ax.bar([i + (j - 0.5) * 0.38 for i in range(len(labels))], vals, 0.38, yerr=err, capsize=3, label=who)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel("dev loss (nats / bot token)")
        ax.set_title(f"Dev loss per language: {stage} held-out")
        ax.legend()
        fig.tight_layout()
        name = f"dev_loss_{stage}.png"
        fig.savefig(cdir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    chat = [r for r in rows if r["kind"] == "chat" and r["metric"] == "in_lang" and r["group"] != "all"]
    for kind, sel, title, name in (
        ("chat", chat, "In-language reply rate (Vicuna-80)", "chat_in_lang.png"),
        ("other", [r for r in rows if r["kind"] in ("translation", "mc") and r["group"] != "all"],
         "FLORES-101 chrF++ / XWinograd / XCOPA accuracy", "mt_mc.png"),
    ):
        if not sel:
            continue
        k = [100.0 if r["percent"] else 1.0 for r in sel]
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(sel) + 2), 3.8))
        for j, who in enumerate(("base", "tuned")):
            vals = [(_v(r[who]) or 0) * kk for r, kk in zip(sel, k)]
            lo = [((_ci(r[who])[0] if _ci(r[who])[0] is not None else _v(r[who]) or 0) * kk) for r, kk in zip(sel, k)]
            hi = [((_ci(r[who])[1] if _ci(r[who])[1] is not None else _v(r[who]) or 0) * kk) for r, kk in zip(sel, k)]
            ax.bar([i + (j - 0.5) * 0.38 for i in range(len(sel))], vals, 0.38,
                   yerr=[[max(0, v - a) for v, a in zip(vals, lo)], [max(0, b - v) for v, b in zip(vals, hi)]],
                   capsize=2, label=who)
        ax.set_xticks(range(len(sel)), [f"{r['task'].split('-')[0]}\n{r['group']}" for r in sel], fontsize=7)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(cdir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def write_outputs(out: Path, meta: dict, dev: dict, runs: dict, cmp_dir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base, tuned = _load(runs["base"]), _load(runs["tuned"])
    cmp = json.loads((cmp_dir / "compare.json").read_text()) if (cmp_dir / "compare.json").exists() else None
    if cmp is not None:  # compare names runs after their folders: base, tuned
        for name in ("compare.md", "compare.json"):
            shutil.copy(cmp_dir / name, out / name)
    rows = eval_rows(base, tuned, cmp)
    tg = targets(dev, rows)
    md = markdown(meta, dev, rows, tg)
    made = charts(out, dev, rows)
    for run_name, run in runs.items():
        shutil.copy(run / "results.json", out / f"eval_{run_name}.results.json")
    (out / "study.json").write_text(json.dumps({"meta": meta, "dev_loss": dev, "eval": rows, "targets": tg},
                                               indent=1, default=str), encoding="utf-8")
    (out / "table.md").write_text(md + "\n", encoding="utf-8")
    sizes = meta["sizes"]
    phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta["phases_s"].items())
    readme = [f"# Real weights before/after: SmolLM2-135M-Instruct vs bloomchat-tuned ({meta['date']})", "",
              f"Made by `python bench/study_real_smollm2.py` ({meta['command']}) on {meta['cpu']}: "
              f"{meta['total_s'] / 60:.1f} min in all ({phases}).", "",
              f"- Base: `{meta['import']['source']}` (sha256 {meta['import']['sha256'][:16]}...), imported by "
              f"`bloomchat base import` as {meta['import']['dtype']} ({meta['import']['parameters'] / 1e6:.1f}M parameters).",
              f"- Tuned: `{meta['recipe']}` with " + ", ".join(f"`{k}={v}`" for k, v in meta["sets"].items()
                                                              if k not in ("base", "shared", "out")) + ".",
              f"- Eval sizes: dev conversations per language and stage <= {sizes['dev_max']}; Vicuna-80 chat "
              f"{sizes['chat_limit_focus']} prompts for zh and fr, {sizes['chat_limit']} for each other language, "
              f"<= {sizes['chat_max_new_tokens']} new tokens, BLOOMChat sampling (T 0.8, top-p 0.9, repetition "
              f"penalty 1.2, seed 0 per example); FLORES-101 {sizes['mt_limit']} sentences per direction (en<->zh; "
              f"FLORES-101 here has no French); XWinograd {sizes['mc_limit']} per language; "
              + (f"XCOPA {sizes['xcopa_limit']} per language." if meta["xcopa"] else "XCOPA not done."),
              "", md, "", "Charts: " + ", ".join(f"`charts/{c}`" for c in made) +
              "; `compare.md` / `compare.json`: `bloomchat eval compare base tuned`; `study.json`: every figure.", ""]
    (out / "README.md").write_text("\n".join(readme), encoding="utf-8")
    print(md)
