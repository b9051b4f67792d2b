"""`bloomchat data-report FILE [-o DIR]`: what is in a prepared file, at a glance.

    bloomchat data-report stage2.jsonl -o stage2-report/
    # -> report.json, sources.png, languages.png, lengths.png, turns.png, filters.png, report.html

Reads the file once, streaming (counts and per-conversation lengths as 4-byte ints), and the
`<stem>.summary.json` that `prepare` wrote next to it for what each filter removed and the
per-file accounting.

Fertility (`data_report(..., tokenizers=[...])`, `fertility()`): tokens per word for each
language, per character for scripts written without spaces between words (zh, ja, th, my, km,
lo, bo), as the ratio of sums over the language's texts: what a language costs in context and
compute under a tokenizer, next to another tokenizer on the same text.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bloomchat.conversation import Conversation
from bloomchat.errors import BloomchatError

#: Languages shown by name in the chart; the rest are summed as "other".
TOP_LANGS = 25


def _stats(values: array) -> dict:
    if not len(values):
        return {"n": 0}
    a = np.frombuffer(values, dtype=np.int32)
    p = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "mean": round(float(a.mean()), 1), "min": int(a.min()), "p50": float(p[0]),
            "p90": float(p[1]), "p99": float(p[2]), "max": int(a.max())}


def scan(path: Path) -> dict:
    """Counts and length lists of a prepared file (a BloomchatError names the first bad line)."""
    path = Path(path)
    if not path.is_file():
        raise BloomchatError("file not found", where=str(path))
    by_source, by_lang, turns_hist = Counter(), Counter(), Counter()
    conv_chars, human_chars, bot_chars = array("i"), array("i"), array("i")
    with path.open("rb") as f:
        for n, line in enumerate(tqdm(f, desc=f"read {path.name}", unit="conv", mininterval=0.5, leave=False), 1):
            if not line.strip():
                continue
            try:
                conv = Conversation.from_record(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
                raise BloomchatError(f"not a prepared record: {e}", where=f"{path}:{n}") from None
            by_source[conv.source] += 1
            by_lang[conv.lang or "null"] += 1
            turns_hist[len(conv.turns)] += 1
            conv_chars.append(len(conv.text))
            for t in conv.turns:
                (human_chars if t.role == "human" else bot_chars).append(len(t.text))
    total = sum(by_source.values())
    if total == 0:
        raise BloomchatError("no conversation in the file", where=str(path))
    return {
        "file": str(path),
        "conversations": total,
        "by_source": dict(by_source.most_common()),
        "by_lang": dict(by_lang.most_common()),
        "turns_per_conversation": {str(k): v for k, v in sorted(turns_hist.items())},
        "chars": {"conversation": _stats(conv_chars), "human_turn": _stats(human_chars), "bot_turn": _stats(bot_chars)},
        "_lengths": (conv_chars, human_chars, bot_chars),
    }


def _barh(ax, counts: dict, title: str, xlabel: str = "conversations") -> None:
    labels, values = list(counts)[::-1], list(counts.values())[::-1]
    bars = ax.barh(labels, values, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.15)


def _charts(rep: dict, summary: dict | None, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    n = rep["conversations"]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.35 * len(rep["by_source"])))
    _barh(ax, rep["by_source"], f"Conversations per source ({n:,} in all)")
    save(fig, "sources.png")

    langs = dict(list(rep["by_lang"].items())[:TOP_LANGS])
    rest = sum(list(rep["by_lang"].values())[TOP_LANGS:])
    if rest:
        langs[f"other ({len(rep['by_lang']) - TOP_LANGS} languages)"] = rest
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.3 * len(langs)))
    _barh(ax, langs, f"Conversations per language ({len(rep['by_lang'])} languages)")
    save(fig, "languages.png")

    conv, human, bot = rep["_lengths"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, vals) in zip(axes, (("conversation", conv), ("turns", None))):
        if vals is not None:
            a = np.frombuffer(vals, dtype=np.int32)
            bins = np.logspace(0, np.log10(max(a.max(), 10)), 50)
            ax.hist(a, bins=bins, color="#4C72B0")
            med = np.median(a)
            ax.axvline(med, color="k", ls="--", lw=1, label=f"median {med:,.0f}")
            ax.set_title("Conversation length (characters)")
        else:
            for label, v, color in (("human turns", human, "#DD8452"), ("bot turns", bot, "#55A868")):
                a = np.frombuffer(v, dtype=np.int32)
                if a.size:
                    bins = np.logspace(0, np.log10(max(a.max(), 10) + 1), 50)
                    ax.hist(np.maximum(a, 1), bins=bins, alpha=0.6, color=color,
                            label=f"{label} (median {np.median(a):,.0f})")
            ax.set_title("Turn length (characters)")
        ax.set_xscale("log")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    save(fig, "lengths.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    th = rep["turns_per_conversation"]
    bars = ax.bar(list(th), list(th.values()), color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:,}" for v in th.values()], fontsize=8)
    ax.set_title("Turns per conversation")
    ax.set_xlabel("turns (human + bot)")
    ax.set_ylabel("conversations")
    ax.margins(y=0.15)
    save(fig, "turns.png")

    if summary is not None:
        filt = summary.get("filtered_conversations") or {}
        rej = summary.get("rejected_lines") or {}
        if filt or rej:
            fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 + 0.4 * max(len(filt), len(rej), 1)))
            _barh(axes[0], filt or {"(none)": 0}, "Conversations removed, by filter")
            _barh(axes[1], rej or {"(none)": 0}, "Input lines rejected, by reason", "lines")
            save(fig, "filters.png")
    return made


def _html(rep: dict, summary: dict | None, charts: list[str]) -> str:
    e = html.escape
    c = rep["chars"]
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{v['n']:,}</td><td>{v.get('p50', 0):,.0f}</td><td>{v.get('p90', 0):,.0f}</td>"
        f"<td>{v.get('max', 0):,}</td></tr>" for k, v in c.items()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>data report: ",
        e(Path(rep["file"]).name),
        "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "img{max-width:100%;display:block;margin:1em 0}</style></head><body>",
        f"<h1>{e(rep['file'])}</h1><p><b>{rep['conversations']:,}</b> conversations, "
        f"{len(rep['by_source'])} sources, {len(rep['by_lang'])} languages.</p>",
        "<h2>Lengths (characters)</h2><table><tr><th></th><th>n</th><th>median</th><th>p90</th><th>max</th></tr>",
        rows, "</table>",
    ]
    parts += [f"<img src='{e(ch)}' alt='{e(ch)}'>" for ch in charts]
    if summary is not None and summary.get("files"):
        parts.append("<h2>Accounting per input file (lines)</h2><table><tr><th>file</th><th>kind</th><th>read</th>"
                     "<th>kept</th><th>filtered</th><th>rejected</th><th>written</th><th>balanced</th></tr>")
        for f in summary["files"]:
            filt = ", ".join(f"{k} {v}" for k, v in f["filtered"].items()) or "0"
            rej = ", ".join(f"{k} {v}" for k, v in f["rejected"].items()) or "0"
            parts.append(f"<tr><td>{e(Path(f['path']).name)}</td><td>{e(f['kind'])}</td><td>{f['lines_read']:,}</td>"
                         f"<td>{f['kept']:,}</td><td>{e(filt)}</td><td>{e(rej)}</td><td>{f['conversations_out']:,}</td>"
                         f"<td>{'yes' if f['balanced'] else 'NO'}</td></tr>")
        parts.append("</table>")
    if rep.get("fertility"):
        names = list(rep["fertility"]["by_tokenizer"])
        langs = sorted({lg for v in rep["fertility"]["by_tokenizer"].values() for lg in v})
        parts.append("<h2>Fertility: tokens per word (per character for zh, ja, th ...)</h2><table><tr><th>lang</th>"
                     + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>")
        for lg in langs:
            cells = "".join(f"<td>{_fert_cell(rep['fertility']['by_tokenizer'][n].get(lg))}</td>" for n in names)
            parts.append(f"<tr><td>{e(lg)}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def _fert_cell(v: dict | None) -> str:
    if not v or v.get("fertility") is None:
        return "-"
    return f"{v['fertility']:.2f}/{v['unit']}"


#: Scripts written without spaces between words: fertility per character (no whitespace) there.
UNSEGMENTED = ("zh", "ja", "th", "my", "km", "lo", "bo")


def count_units(text: str, lang: str | None) -> tuple[int, str]:
    """(words, "word"), or (characters other than whitespace, "char") for UNSEGMENTED languages."""
    if lang in UNSEGMENTED:
        return sum(1 for ch in text if not ch.isspace()), "char"
    return len(text.split()), "word"


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text alone, without BOS/EOS (what a sentence adds to a context)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def fertility(tokenizer, texts_by_lang: dict[str, list[str]], batch: int = 256) -> dict:
    """{lang: {"tokens", "units", "unit", "fertility", "chars_per_token", "texts"}}."""
    out = {}
    for lang, texts in texts_by_lang.items():
        tokens = units = chars = 0
        unit = count_units("", lang)[1]
        for i in range(0, len(texts), batch):
            chunk = texts[i: i + batch]
            tokens += sum(count_tokens(tokenizer, chunk))
            units += sum(count_units(t, lang)[0] for t in chunk)
            chars += sum(len(t) for t in chunk)
        out[lang] = {"texts": len(texts), "tokens": tokens, "units": units, "unit": unit,
                     "fertility": round(tokens / units, 4) if units else None,
                     "chars_per_token": round(chars / tokens, 4) if tokens else None}
    return out


def _texts_by_lang(path: Path, per_lang: int) -> dict[str, list[str]]:
    """Turn texts of a prepared file by language, at most `per_lang` conversations each."""
    texts: dict[str, list[str]] = {}
    seen: Counter = Counter()
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            conv = Conversation.from_record(json.loads(line))
            lang = conv.lang or "null"
            if seen[lang] >= per_lang:
                continue
            seen[lang] += 1
            texts.setdefault(lang, []).extend(t.text for t in conv.turns)
    return texts


def data_report(file: Path, out: Path | None = None, tokenizers: list | None = None,
                fertility_sample: int = 2000) -> dict:
    """Write report.json, PNG charts and report.html for a prepared file; returns the report."""
    file = Path(file)
    out = Path(out) if out is not None else file.with_name(file.stem + ".report")
    rep = scan(file)
    sp = file.with_name(file.stem + ".summary.json")
    summary = None
    if sp.is_file():
        try:
            summary = json.loads(sp.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BloomchatError(f"summary is not valid JSON: {e.msg}", where=f"{sp}:{e.lineno}") from None
    # Everything is written into a temp folder that replaces OUT only once complete: a failing
    # run leaves the previous report as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rep = _write_report(file, rep, summary, out, tmp, tokenizers, fertility_sample)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return rep


def _write_report(file: Path, rep: dict, summary: dict | None, out: Path, tmp: Path, tokenizers: list | None,
                  fertility_sample: int) -> dict:
    """Charts, report.json and report.html into `tmp`, naming their final place in `out`."""
    charts = _charts(rep, summary, tmp)
    rep.pop("_lengths")
    if summary is not None:
        rep["prepare"] = {k: summary.get(k) for k in
                          ("filtered_conversations", "rejected_lines", "filtered_lines", "files", "balanced", "options")}
    if tokenizers:  # [(name, tokenizer)]: tokens per word for each language, on the same texts
        texts = _texts_by_lang(file, fertility_sample)
        rep["fertility"] = {"sample_conversations_per_lang": fertility_sample,
                            "by_tokenizer": {name: fertility(tok, texts) for name, tok in tokenizers}}
    rep["charts"] = [str(out / c) for c in charts]
    rep["json"] = str(out / "report.json")
    rep["html"] = str(out / "report.html")
    (tmp / "report.html").write_text(_html(rep, summary, charts), encoding="utf-8")
    (tmp / "report.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return rep
