"""The plan of a recipe, computed without training: what `bloomchat train --dry-run` prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bloomchat.train.recipe import Recipe, world_size_from_env
from bloomchat.train.stage_data import packed_dir


def _stats(d: Path) -> dict | None:
    p = d / "stats.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _train_split(stats: dict) -> dict:
    return (stats.get("split") or {}).get("train") or stats


def make_plan(recipe: Recipe, world_size: int | None = None) -> dict:
    world = world_size or world_size_from_env()
    stages = []
    for i, st in enumerate(recipe.stages):
        sd = recipe.stage_dir(st)
        pdir = packed_dir(recipe, st)
        stats = _stats(pdir)
        split = _train_split(stats) if stats else None
        rows = split.get("sequences") if split else None
        init = {"base": recipe.base_model, "previous": f"stage {recipe.stages[i - 1].name}" if i else recipe.base_model}
        entry = {
            "name": st.name,
            "init_from": init.get(st.init_from, f"stage {st.init_from}" if any(s.name == st.init_from for s in recipe.stages) else st.init_from),
            "data": ({"shards": str(st.data.shards)} if st.data.shards else
                     {src: [str(p) for p in files] for src, files in st.data.sources().items()}),
            "epochs": st.epochs,
            "global_batch_size": st.global_batch_size,
            "micro_batch_size": st.micro_batch_size,
            "processes": world,
            "grad_accum": st.global_batch_size // (st.micro_batch_size * world),
            "lr": st.lr,
            "prompt_loss_weight": st.prompt_loss_weight,
            "rows": rows,
            "steps": None,
            "tokens": None,
            "loss_tokens": None,
            "output_dir": str(sd),
            "model_dir": str(sd / "model"),
            "checkpoints": str(sd / "checkpoints"),
        }
        if rows:
            spe = math.ceil(rows / st.global_batch_size)
            steps = math.ceil(st.epochs * spe)
            if st.max_steps:
                steps = min(steps, st.max_steps)
            frac = steps / spe  # epochs actually run (the last batch of an epoch may be short)
            entry.update(steps=steps, tokens=int(split.get("tokens", 0) * frac),
                         loss_tokens=int(split.get("loss_tokens", 0) * frac))
        else:
            entry["note"] = "steps and tokens are known once the raw sources are prepared and packed"
        stages.append(entry)
    return {"recipe": str(recipe.path) if recipe.path else recipe.name, "name": recipe.name,
            "base_model": recipe.base_model, "method": recipe.method, "precision": recipe.precision,
            "output_dir": str(recipe.output_dir), "stages": stages,
            "final_model_dir": stages[-1]["model_dir"]}


def format_plan(plan: dict) -> str:
    out = [f"recipe {plan['name']} ({plan['recipe']})",
           f"  base model: {plan['base_model']}   method: {plan['method']}   precision: {plan['precision']}",
           f"  output: {plan['output_dir']}"]
    for i, s in enumerate(plan["stages"], 1):
        out.append(f"stage {i}: {s['name']}  (from {s['init_from']})")
        for src, files in s["data"].items():
            shown = files if isinstance(files, str) else ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
            out.append(f"  data {src}: {shown}")
        out.append(f"  {s['epochs']} epoch(s); global batch {s['global_batch_size']} = {s['micro_batch_size']} per "
                   f"process x {s['processes']} process(es) x {s['grad_accum']} accumulation; lr {s['lr']}; "
                   f"prompt loss weight {s['prompt_loss_weight']}")
        if s.get("steps") is not None:
            out.append(f"  rows {s['rows']}, steps {s['steps']}, tokens {s['tokens']:,}, loss tokens {s['loss_tokens']:,}")
        else:
            out.append(f"  {s['note']}")
        out.append(f"  model -> {s['model_dir']}")
        out.append(f"  checkpoints -> {s['checkpoints']}")
    return "\n".join(out)
