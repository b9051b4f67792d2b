"""Pairwise LLM judge: which of two systems' replies to the same prompt is better, per language.

    bloomchat eval run JUDGE --task judge --data runs/base --data-b runs/stage2 -o runs/judge-base-vs-stage2
    bloomchat eval run gpt-4o --backend openai --base-url URL --task judge --data a.jsonl --data-b b.jsonl -o runs/j

Replies come from eval chat runs (a run dir: the per-example records of its first chat task;
a reply is judged with the conversation before it) or from JSONL files of `{"prompt_id", "reply"}` with the prompt in "messages" (OpenAI
form), "turns" (arena form) or "prompt", and "lang" (what `bloomchat arena export --prompts`
and `bloomchat arena export-replies` write). Items are the prompt ids both sides have.

The judge (any local model or OpenAI-compatible endpoint, greedy) sees the conversation and
the two replies, and ends with [[A]], [[B]] or [[C]] (tie). Every pair is asked in both orders
(position swap); the outcome is the verdict both orders agree on, otherwise a tie (an
unparsable verdict counts as a tie for its order). Reported per language, 95% bootstrap
intervals: a_wins, b_wins, ties, a_score (wins + half the ties), consistent (both orders
agree), and a length-controlled a_score: a logistic fit of the outcome (ties as one half) on
tanh(length difference / its standard deviation), read at equal lengths (the idea of
AlpacaEval's length-controlled win rate, with one covariate), bootstrapped over prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bloomchat.errors import BloomchatError
from bloomchat.eval.backends import GenParams
from bloomchat.langs import lang_name, normalize_lang
from bloomchat.eval.metrics import Metric, mean_metric
from bloomchat.eval.readers import existing, iter_jsonl
from bloomchat.eval.task import EvalTask, select_by_lang

#: Greedy: a verdict should not depend on a sampling seed; 512 tokens leave room for a short
#: explanation before the verdict.
JUDGE_PARAMS = GenParams(max_new_tokens=512, temperature=0.0)
VERDICT = re.compile(r"\[\[([ABC])\]\]")

JUDGE_PROMPT = """You are judging two AI assistants' replies to the same user. The user writes in {lang}; \
a reply that is not in {lang}, unless the user asked for another language, is worse. Judge helpfulness, \
correctness, depth and fluency. The order in which the replies are shown and their length must not \
influence you. Explain briefly, then end with your verdict: [[A]] if assistant A is better, [[B]] if \
assistant B is better, [[C]] for a tie.

[The conversation]
{conversation}

[Assistant A's reply]
{reply_a}

[Assistant B's reply]
{reply_b}"""


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'C' (the last [[X]] in the reply), None when there is none."""
    found = VERDICT.findall(text or "")
    return found[-1] if found else None


def combine(first: str | None, swapped: str | None) -> tuple[str, bool]:
    """(outcome a|b|tie, consistent) from the verdict with A shown first and the verdict with the
    order swapped (its "A" is system b)."""
    v1 = {"A": "a", "B": "b"}.get(first or "", "tie")
    v2 = {"A": "b", "B": "a"}.get(swapped or "", "tie")
    return (v1 if v1 == v2 else "tie"), v1 == v2


def _conversation(messages: Sequence[dict]) -> str:
    return "\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)


def _messages_of(rec: dict, where: str) -> list[dict]:
    if isinstance(rec.get("messages"), list):
        return [{"role": m["role"], "content": m["content"]} for m in rec["messages"] if m.get("role") != "system"]
    if isinstance(rec.get("turns"), list):
        return [{"role": "user" if t.get("role") in ("human", "user") else "assistant", "content": t["text"]}
                for t in rec["turns"]]
    if isinstance(rec.get("prompt"), str):
        return [{"role": "user", "content": rec["prompt"]}]
    raise BloomchatError("no prompt: give 'messages', 'turns' or 'prompt' (or --prompts FILE)", where=where)


def load_side(path: str | Path, prompts: dict[str, dict] | None = None) -> tuple[str, dict[str, dict]]:
    """(system name, {prompt id: {"lang", "messages", "reply"}}) from a run dir or a JSONL file."""
    p = existing(path)
    if p.is_dir():
        res = p / "results.json"
        if not res.exists():
            raise BloomchatError("not an eval run dir (no results.json)", where=str(p))
        results = json.loads(res.read_text(encoding="utf-8"))
        chats = [(n, t) for n, t in results.get("tasks", {}).items() if t.get("kind") == "chat"]
        if not chats:
            raise BloomchatError("this run dir has no chat task to judge", where=str(res))
        out = {}
        for name, entry in chats[:1]:
            for line, rec in iter_jsonl(p / entry["examples_file"]):
                turns = rec["turns"]
                msgs = []
                for t in turns[:-1]:
                    msgs += [{"role": "user", "content": t["prompt"]}, {"role": "assistant", "content": t["reply"]}]
                msgs.append({"role": "user", "content": turns[-1]["prompt"]})
                out[rec["id"]] = {"lang": rec["group"], "messages": msgs, "reply": turns[-1]["reply"]}
        return str((results.get("model") or {}).get("model") or p.name), out
    out, system = {}, None
    for line, rec in iter_jsonl(p):
        where = f"{p}:{line}"
        if not isinstance(rec, dict) or "prompt_id" not in rec or not isinstance(rec.get("reply"), str):
            raise BloomchatError("each line needs 'prompt_id' and a string 'reply'", where=where)
        pid = str(rec["prompt_id"])
        base = dict(prompts.get(pid, {})) if prompts else {}
        base.update(rec)
        lang = base.get("lang")
        if not lang:
            raise BloomchatError("no 'lang' (give it in the file or through --prompts)", where=where)
        out[pid] = {"lang": normalize_lang(lang, f"{where} field lang"), "messages": _messages_of(base, where),
                    "reply": rec["reply"]}
        system = system or rec.get("system")
    return str(system or p.stem), out


def load_prompt_file(path: str | Path | None) -> dict[str, dict]:
    if not path:
        return {}
    return {str(rec["prompt_id"]): rec for _, rec in iter_jsonl(existing(path)) if isinstance(rec, dict)}


def length_controlled(records: Sequence[dict], bootstrap: int = 200, seed: int = 0) -> dict:
    """a_score at equal reply lengths: logistic fit y ~ theta + beta * tanh(dlen / sd(dlen)),
    y = 1 / 0.5 / 0 for a / tie / b, read at dlen 0 (sigmoid(theta)); 95% bootstrap over items."""
    y = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[r["outcome"]] for r in records])
    d = np.array([r["len_a"] - r["len_b"] for r in records], dtype=float)
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)

    def fit(yy, xx):
        theta = beta = 0.0
        for _ in range(50):  # Newton steps with a small ridge: a separable sample stays finite
            p = 1 / (1 + np.exp(-(theta + beta * xx)))
            w = p * (1 - p)
            g = np.array([np.sum(yy - p) - 1e-2 * theta, np.sum((yy - p) * xx) - 1e-2 * beta])
            h = np.array([[w.sum() + 1e-2, (w * xx).sum()], [(w * xx).sum(), (w * xx * xx).sum() + 1e-2]])
            step = np.linalg.solve(h, g)
            theta, beta = theta + step[0], beta + step[1]
            if np.abs(step).max() < 1e-8:
                break
        return float(1 / (1 + np.exp(-theta))), float(beta)

    if len(y) == 0:
        return {"value": None, "ci95": None, "n": 0}
    value, beta = fit(y, x)
    ci = None
    if bootstrap and len(y) > 1:
        rng = np.random.default_rng(seed)
        vals = [fit(y[idx], x[idx])[0] for idx in rng.integers(0, len(y), size=(bootstrap, len(y)))]
        ci = [float(v) for v in np.percentile(vals, [2.5, 97.5])]
    return {"value": value, "ci95": ci, "n": int(len(y)), "length_slope": beta}


def judge_metrics() -> list[Metric]:
    return [mean_metric("a_score", lambda r: {"a": 1.0, "tie": 0.5, "b": 0.0}[r["outcome"]], percent=True),
            mean_metric("a_wins", lambda r: r["outcome"] == "a", percent=True),
            mean_metric("b_wins", lambda r: r["outcome"] == "b", percent=True, higher_is_better=False),
            mean_metric("ties", lambda r: r["outcome"] == "tie", percent=True, higher_is_better=None),
            mean_metric("consistent", lambda r: r["consistent"], percent=True),
            mean_metric("a_longer", lambda r: r["len_a"] > r["len_b"], percent=True, higher_is_better=None)]


@dataclass
class JudgeTask(EvalTask):
    data: str  # side A
    data_b: str = ""  # side B
    prompts: str | None = None
    langs: list[str] | None = None
    limit: int | None = None
    params: GenParams = field(default_factory=lambda: JUDGE_PARAMS)
    format: str = "auto"
    name: str = ""
    kind: str = "judge"
    chart_metrics = ("a_score", "consistent")

    def __post_init__(self):
        if not self.data_b:
            raise BloomchatError("the judge compares two systems: --data A --data-b B", where="--data-b")
        self._examples = None
        self.systems = ("a", "b")
        if not self.name:
            self.name = f"judge-{Path(self.data).stem or Path(self.data).name}-vs-{Path(self.data_b).stem or Path(self.data_b).name}"

    def examples(self) -> list[dict]:
        if self._examples is None:
            prompts = load_prompt_file(self.prompts)
            name_a, a = load_side(self.data, prompts)
            name_b, b = load_side(self.data_b, prompts)
            if name_a == name_b:
                name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
            self.systems = (name_a, name_b)
            items = [{"id": k, "lang": a[k]["lang"], "messages": a[k]["messages"], "reply_a": a[k]["reply"],
                      "reply_b": b[k]["reply"]} for k in a if k in b]
            self._examples = select_by_lang(items, langs=self.langs, limit=self.limit,
                                            where=f"{self.data} and {self.data_b}", what="prompts both sides answered")
        return self._examples

    def _chat(self, ex: dict, first: str, second: str) -> list[dict]:
        text = JUDGE_PROMPT.format(lang=lang_name(ex["lang"]), conversation=_conversation(ex["messages"]),
                                   reply_a=first, reply_b=second)
        return [{"role": "user", "content": text}]

    def run_batch(self, backend, batch: Sequence[dict]) -> list[dict]:
        chats = [self._chat(ex, ex["reply_a"], ex["reply_b"]) for ex in batch] + \
                [self._chat(ex, ex["reply_b"], ex["reply_a"]) for ex in batch]
        replies = backend.generate(chats, self.params)
        n = len(batch)
        out = []
        for i, ex in enumerate(batch):
            v1, v2 = parse_verdict(replies[i].text), parse_verdict(replies[n + i].text)
            outcome, consistent = combine(v1, v2)
            out.append({"id": ex["id"], "group": ex["group"], "system_a": self.systems[0], "system_b": self.systems[1],
                        "verdict_ab": v1, "verdict_ba": v2, "outcome": outcome, "consistent": consistent,
                        "len_a": len(ex["reply_a"]), "len_b": len(ex["reply_b"]),
                        "judge_ab": replies[i].text, "judge_ba": replies[n + i].text})
        return out

    def metrics(self, group: str) -> list[Metric]:
        return judge_metrics()

    def extra_summary(self, records: Sequence[dict]) -> dict:
        groups: dict[str, list] = {}
        for r in records:
            groups.setdefault(r["group"], []).append(r)
        if len(groups) > 1:
            groups["all"] = list(records)
        return {"systems": {"a": self.systems[0], "b": self.systems[1]},
                "length_controlled_a_score": {g: length_controlled(rs) for g, rs in groups.items()},
                "unparsed_verdicts": sum((r["verdict_ab"] is None) + (r["verdict_ba"] is None) for r in records)}

    def config(self) -> dict:
        return {"task": self.kind, "a": str(Path(self.data).resolve()), "b": str(Path(self.data_b).resolve()),
                "prompts": self.prompts, "langs": self.langs or "all", "limit": self.limit,
                "generation": self.params.to_dict(), "both_orders": True,
                "outcome": "the verdict both orders agree on, else tie; unparsed = tie for its order"}
