"""Run tasks against a backend into a run dir: batched, resumable, then scored and reported.

    RUNDIR/results.json            every number, the full configuration, sacrebleu signatures
    RUNDIR/results.md              the same numbers as Markdown tables
    RUNDIR/charts/<task>.png       one chart per task (95% bootstrap intervals as error bars)
    RUNDIR/examples/<task>.jsonl   one record per example (the resume cache, and what compare reads)
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from bloomchat import __version__
from bloomchat.errors import BloomchatError
from bloomchat.eval.cache import ExampleCache
from bloomchat.eval.metrics import DEFAULT_BOOTSTRAP
from bloomchat.eval.task import EvalTask

#: Backend fields that do not change the numbers (so a run may resume on another device).
_NOT_IN_CACHE_KEY = ("device", "concurrency")
#: Backend fields that only change generated text: left out of the key of scoring-only tasks
#: (mc), so their caches stay valid when only the generation path changes.
_GENERATION_KEYS = ("generation", "seeds")


def cache_key(task: EvalTask, backend) -> dict:
    """What must be equal for cached examples to be reused: the task's config and the backend's."""
    skip = _NOT_IN_CACHE_KEY + (() if task.generates else _GENERATION_KEYS)
    model_key = {k: v for k, v in backend.describe().items() if k not in skip}
    return {"task": task.config(), "model": model_key}


def run_task(task: EvalTask, backend, run_dir: str | Path, *, batch_size: int = 8, overwrite: bool = False,
             bootstrap: int = DEFAULT_BOOTSTRAP, progress: bool = True) -> dict:
    """Evaluate one task (resuming from RUNDIR/examples) and return its entry of results.json."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise BloomchatError("batch size must be at least 1", where="--batch-size")
    examples = task.examples()
    if not examples:
        raise BloomchatError("the evaluation set is empty", where=getattr(task, "data", task.name))
    ids = [ex["id"] for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BloomchatError(f"example id {dup!r} occurs twice", where=getattr(task, "data", task.name))
    cache = ExampleCache(run_dir, task.name, cache_key(task, backend), overwrite=overwrite)
    todo = sorted((ex for ex in examples if ex["id"] not in cache), key=task.sort_key)
    started = time.perf_counter()
    with tqdm(total=len(examples), initial=len(examples) - len(todo), desc=f"eval {task.name}", unit="ex",
              disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            cache.add(task.run_batch(backend, batch))
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    records = cache.records(ids)
    entry = {
        "kind": task.kind,
        "config": task.config(),
        "n_examples": len(records),
        "metrics": task.summarize(records, bootstrap=bootstrap),
        "examples_file": str(cache.path.relative_to(Path(run_dir))),
        "timing": {"seconds_this_session": round(elapsed, 3), "examples_this_session": len(todo),
                   "examples_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
                   "batch_size": batch_size},
    }
    first_group = records[0]["group"]
    entry["metric_info"] = {m.name: {"percent": m.percent, "higher_is_better": m.higher_is_better}
                            for m in task.metrics(first_group)}
    entry["chart_metrics"] = list(task.chart_metrics)
    entry.update(task.extra_summary(records))
    return entry


def load_results(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / "results.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BloomchatError(f"results.json is not valid JSON ({e})", where=str(p)) from None


def run_eval(tasks: Sequence[EvalTask], backend, run_dir: str | Path, *, batch_size: int = 8,
             overwrite: bool = False, bootstrap: int = DEFAULT_BOOTSTRAP, progress: bool = True,
             command: str | None = None) -> dict:
    """Run every task into `run_dir`; tasks already in its results.json are kept (one model per dir)."""
    from bloomchat.eval.report import write_report

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = backend.describe()
    results = load_results(run) or {}
    old_model = results.get("model")
    ident = ("backend", "model", "base_url")
    if old_model and {k: old_model.get(k) for k in ident} != {k: model.get(k) for k in ident} and not overwrite:
        raise BloomchatError(f"this run dir holds results of another model ({old_model.get('model')}); "
                             "one run dir per model: use another -o", where=str(run / "results.json"))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise BloomchatError(f"two tasks are named {next(n for n in names if names.count(n) > 1)!r}; give --name")
    results.update({"bloomchat_version": __version__, "model": model})
    results.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results.setdefault("tasks", {})
    try:
        for t in tasks:
            results["tasks"][t.name] = run_task(t, backend, run, batch_size=batch_size, overwrite=overwrite,
                                                bootstrap=bootstrap, progress=progress)
            if command:
                results["tasks"][t.name]["command"] = command
            _add_guards_effect(t, results, run, bootstrap)
            results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_report(run, results)  # after each task, so a later failure keeps the finished ones
    finally:
        for t in tasks:
            close = getattr(t, "close", None)
            if close:
                close()
    return results


def _add_guards_effect(task: EvalTask, results: dict, run: Path, bootstrap: int) -> None:
    """For a chat task run with guards on, its paired difference to the guards-off run of the
    same prompts (when that run is in this run dir)."""
    from bloomchat.eval.cache import read_examples
    from bloomchat.eval.chat import ChatTask, guards_effect

    if not isinstance(task, ChatTask) or task.guards != "on":
        return
    off_name = task.name.replace(".guards-on", ".guards-off")
    off = results["tasks"].get(off_name)
    if off is None:
        return
    ids = [ex["id"] for ex in task.examples()]
    on_recs = {r["id"]: r for r in read_examples(run / results["tasks"][task.name]["examples_file"])}
    off_recs = {r["id"]: r for r in read_examples(run / off["examples_file"])}
    both = [i for i in ids if i in on_recs and i in off_recs]
    results["tasks"][task.name]["guards_effect"] = {
        "versus": off_name,
        "deltas": guards_effect(task, [off_recs[i] for i in both], [on_recs[i] for i in both], bootstrap=bootstrap)}


__all__ = ["run_eval", "run_task", "load_results"]
