"""Per-example results appended as they are made, so a killed evaluation resumes where it stopped.

RUNDIR/examples/<task>.jsonl holds one JSON object per finished example (keyed by "id");
RUNDIR/examples/<task>.config.json holds the configuration that made them. Resuming with a
different configuration would mix two experiments in one number, so it is refused.
A line cut short by a kill is dropped on reopening.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from bloomchat.errors import BloomchatError


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class ExampleCache:
    def __init__(self, run_dir: str | Path, task_name: str, config: dict, *, overwrite: bool = False):
        self.dir = Path(run_dir) / "examples"
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = safe_name(task_name)
        self.path = self.dir / f"{stem}.jsonl"
        self.config_path = self.dir / f"{stem}.config.json"
        config_json = json.loads(json.dumps(config, sort_keys=True, default=str))
        if overwrite:
            self.path.unlink(missing_ok=True)
            self.config_path.unlink(missing_ok=True)
        # A configuration binds the run dir only once an example was made with it: a run that failed
        # before its first example (a wrong model name on a server, say) does not block the fixed one.
        made_any = self.path.exists() and self.path.stat().st_size > 0
        if self.config_path.exists() and made_any:
            old = json.loads(self.config_path.read_text(encoding="utf-8"))
            if old != config_json:
                a, b = _flat(old), _flat(config_json)
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise BloomchatError(
                    f"this run dir holds task {task_name!r} made with another configuration "
                    f"(differs in: {', '.join(changed)}); use another -o, or --overwrite to start it again",
                    where=str(self.config_path))
        else:
            tmp = self.config_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(config_json, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.config_path)
        self.done: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good: list[str] = []
        dropped = False
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    if not line.endswith("\n"):
                        raise ValueError("cut short")
                except ValueError:
                    dropped = True
                    continue
                self.done[str(rec["id"])] = rec
                good.append(line)
        if dropped:  # rewrite without the broken line so appends start on a fresh line
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(good), encoding="utf-8")
            os.replace(tmp, self.path)

    def __contains__(self, example_id: str) -> bool:
        return str(example_id) in self.done

    def add(self, records: Iterable[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for rec in records:
                self.done[str(rec["id"])] = rec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self, ids: Iterable[str]) -> list[dict]:
        """The finished records for `ids`, in that order."""
        return [self.done[str(i)] for i in ids]


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_examples(path: str | Path) -> list[dict]:
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
