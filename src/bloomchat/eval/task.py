"""What the runner needs from a task: examples with ids and groups, a batch step, metrics."""

from __future__ import annotations

from typing import Sequence

from bloomchat.errors import BloomchatError
from bloomchat.eval.metrics import DEFAULT_BOOTSTRAP, Metric, evaluate


def select_by_lang(items: list[dict], *, langs: Sequence[str] | None, limit: int | None, where: str,
                   what: str = "examples") -> list[dict]:
    """Keep the requested languages (an absent one is an error naming what the set has) and at most
    `limit` items per language, in file order; each item's group is its language."""
    if not items:
        raise BloomchatError(f"no {what}", where=where)
    if langs:
        present = sorted({it["lang"] for it in items})
        missing = [x for x in langs if x not in present]
        if missing:
            raise BloomchatError(f"no {what} in {', '.join(missing)}; the set has {', '.join(present)}", where=where)
        items = [it for it in items if it["lang"] in langs]
    per: dict[str, int] = {}
    out = []
    for it in items:
        if limit and per.get(it["lang"], 0) >= limit:
            continue
        per[it["lang"]] = per.get(it["lang"], 0) + 1
        out.append({**it, "group": it["lang"]})
    return out


class EvalTask:
    """One evaluation: `examples` (dicts with "id" and "group"), `run_batch`, `metrics`."""

    kind: str = ""
    name: str = ""
    #: Metrics drawn in the task's PNG chart (all of them are in results.json and the table).
    chart_metrics: tuple[str, ...] = ()
    #: Whether the task generates text (its resume key then names the backend's generation path).
    generates: bool = True

    def examples(self) -> list[dict]:
        raise NotImplementedError

    def run_batch(self, backend, batch: Sequence[dict]) -> list[dict]:
        raise NotImplementedError

    def metrics(self, group: str) -> list[Metric]:
        raise NotImplementedError

    def config(self) -> dict:
        """Everything that changes the numbers (written to results.json and the cache)."""
        raise NotImplementedError

    def sort_key(self, ex: dict) -> int:
        """Batches are formed in this order (similar lengths together: less padding)."""
        return 0

    def overall(self) -> bool:
        """Whether an "all" group pooling every example is meaningful (not for BLEU across targets)."""
        return True

    def extra_summary(self, records: Sequence[dict]) -> dict:
        return {}

    def summarize(self, records: Sequence[dict], *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
        """{group: {metric: {"value", "ci95", "n"}}}, groups in first-seen order, then "all"."""
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(r["group"], []).append(r)
        out: dict[str, dict] = {}
        for g, recs in groups.items():
            out[g] = {m.name: evaluate(m, recs, bootstrap=bootstrap, seed=seed) for m in self.metrics(g)}
        if self.overall() and len(groups) > 1:
            out["all"] = {m.name: evaluate(m, records, bootstrap=bootstrap, seed=seed) for m in self.metrics("all")}
        return out
