"""What both demos (tiny and real base) share: a work directory whose steps are skipped when
their inputs did not change, and the train-once-then-reuse step over `bloomchat.train.run_recipe`.

Each step records a key of its inputs in WORKDIR/demo-state.json; a later run skips a step whose
key is unchanged, and an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from bloomchat.errors import BloomchatError


def shipped_recipe(name: str) -> Path:
    """Path of a recipe shipped with bloomchat (recipes/NAME.yaml, inside the package as bloomchat/recipes)."""
    path = Path(str(resources.files("bloomchat") / "recipes" / f"{name}.yaml"))
    if not path.exists():
        raise BloomchatError(f"shipped recipe not found: {path}")
    return path


def sha(*parts: bytes | str) -> str:
    """A short key of the given parts (a step's inputs)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def dir_key(root: Path) -> str:
    """Key of every file's name and bytes under `root`."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return sha(*[f"{p.relative_to(root)}" for p in files], *[p.read_bytes() for p in files])


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def write_demo_data(data_dir: Path) -> list[Path]:
    """Copy the bundled demo conversations (our own, see demo/data/SOURCE.md) into `data_dir`."""
    src = resources.files("bloomchat.demo") / "data"
    written = []
    for layout in ("oig", "dolly", "oasst1"):
        for entry in sorted(src.joinpath(layout).iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".jsonl"):
                continue
            dest = data_dir / layout / entry.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            content = entry.read_bytes()
            if not dest.exists() or dest.read_bytes() != content:
                dest.write_bytes(content)
            written.append(dest)
    if not written:
        raise BloomchatError(f"bundled demo data missing from the installed package ({src})")
    return written


class DemoState:
    """demo-state.json: which step was done with which input key."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def done(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key and self.data[step].get("done", False)

    def started(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key

    def mark(self, step: str, key: str, done: bool, **extra: Any) -> None:
        self.data[step] = {"key": key, "done": done, **extra}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


class DemoWorkdir:
    """The demo's directory, its state file, its console and the time each step took."""

    def __init__(self, workdir: str | Path, *, fresh: bool, console: Console | None = None):
        self.console = console or Console()
        self.path = Path(workdir).expanduser().resolve()
        if fresh and self.path.exists():
            self.console.print(f"[bold]--fresh:[/] removing {self.path}")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.state = DemoState(self.path / "demo-state.json")
        self.timings: dict[str, float] = {}
        self._t0 = self._t = time.perf_counter()
        self._name: str | None = None

    def step(self, name: str, title: str) -> None:
        """Start step `name` (ending the previous one's clock) and show its title."""
        self._stop()
        self.console.rule(f"[bold cyan]{title}")
        self._name, self._t = name, time.perf_counter()

    def finish(self) -> dict[str, float]:
        """Stop the clock of the last step; timings with the total."""
        self._stop()
        self.timings["total"] = time.perf_counter() - self._t0
        return self.timings

    def _stop(self) -> None:
        if self._name is not None:
            self.timings[self._name] = time.perf_counter() - self._t
            self._name = None

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)

    def train_once(self, recipe: Path, key: str, *, step: str = "train", runs: str = "runs",
                   vars: dict[str, str] | None = None) -> tuple[Path, dict]:
        """Train `recipe` (its output under WORKDIR/`runs`) and copy its final model to WORKDIR/model,
        or reuse it when `key` was trained to the end under this `step` name.

        A run interrupted with the same key resumes from its last checkpoint; another key starts over."""
        from bloomchat.train import run_recipe

        model_dir = self.path / "model"
        if self.state.done(step, key) and (model_dir / "config.json").exists():
            self.say(f"  reusing {model_dir}")
            return model_dir, self.state.data[step].get("result", {})
        resume = self.state.started(step, key)
        if not resume and (self.path / runs).exists():
            shutil.rmtree(self.path / runs)
        self.state.mark(step, key, False)
        result = run_recipe(recipe, vars={"workdir": str(self.path), **(vars or {})}, resume=resume)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(Path(result["final_model_dir"]), model_dir)
        self.state.mark(step, key, True, result=jsonable(result))
        return model_dir, result

    def show_next(self, model_dir: Path, extra: tuple[str, ...] = ()) -> None:
        """The commands that use the model just built."""
        self.console.print("Next:")
        for cmd in (f"bloomchat chat {model_dir}",
                    f"bloomchat serve {model_dir} --port 8000    # OpenAI-compatible API and web chat at "
                    "http://127.0.0.1:8000/", *extra):
            self.say(f"  {cmd}")
