"""The plan of a recipe, computed without training: what `bloomchat train --dry-run` prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bloomchat.errors import BloomchatError
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


def _base_config(recipe: Recipe):
    """The base model's config, or None when it cannot be read here (a hub name while offline)."""
    from transformers import AutoConfig

    from bloomchat.models.loading import _hub_kwargs

    src = recipe.base_model
    try:
        return AutoConfig.from_pretrained(src, **_hub_kwargs(src))
    except (OSError, ValueError) as e:
        if Path(src).is_dir():
            raise BloomchatError(f"cannot read the base model's config: {str(e).splitlines()[0]}",
                                 where=f"{recipe.path} base_model") from None
        return None


def linear_module_names(model) -> list[str]:
    """Last name parts of the model's linear layers (what LoRA `target_modules` can name), without
    the LM head: q_proj, k_proj, ... for Llama; query_key_value, dense, ... for BLOOM."""
    import torch

    kinds = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 style projections

        kinds = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        pass
    out = model.get_output_embeddings()
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, kinds) and m is not out})


def missing_lora_targets(model, targets: list[str]) -> list[str]:
    """Targets that match no module name the way peft matches them (whole name or a dotted suffix)."""
    names = [n for n, _ in model.named_modules() if n]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def check_base(recipe: Recipe) -> dict | None:
    """What training would hit only after minutes, found in seconds (`--dry-run` and before any
    stage runs): a quantized base, whose weights `save_pretrained` refuses to write, and LoRA
    target modules the model does not have, checked on the model built on the meta device (no
    weights read). Returns the base's config, or None when it cannot be read here."""
    import torch

    if recipe.attention == "flex" and not torch.cuda.is_available():  # before any data is prepared
        raise BloomchatError("attention 'flex' trains on a CUDA GPU only: torch has no FlexAttention backward on "
                             "CPU; use attention: sdpa here", where=f"{recipe.path} attention")
    cfg = _base_config(recipe)
    if cfg is None:
        return None
    if getattr(cfg, "quantization_config", None):
        q = cfg.quantization_config
        kind = q.get("quant_method", "?") if isinstance(q, dict) else getattr(q, "quant_method", "?")
        raise BloomchatError(f"the base model is quantized ({kind}; config.json has quantization_config): its "
                             "weights cannot be trained and saved as they are; make a full-precision copy with "
                             "`bloomchat base import` and train from that", where=f"{recipe.path} base_model")
    if recipe.method == "lora":
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(cfg)
        missing = missing_lora_targets(model, list(recipe.lora.target_modules))
        if missing:
            raise BloomchatError(f"LoRA target module(s) {', '.join(missing)} not in this model; its linear layers "
                                 f"are: {', '.join(linear_module_names(model))}",
                                 where=f"{recipe.path} lora.target_modules")
    return cfg


def make_plan(recipe: Recipe, world_size: int | None = None) -> dict:
    world = world_size or world_size_from_env()
    cfg = check_base(recipe)
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
                     {"pairs": [str(p) for p in st.data.pairs]} if st.data.pairs else
                     {src: [str(p) for p in files] for src, files in st.data.sources().items()}),
            "kind": st.kind if st.kind == "sft" else f"{st.kind} (loss {st.loss}, beta {st.beta})",
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
            "base_checked": cfg is not None,
            "final_model_dir": stages[-1]["model_dir"]}


def format_plan(plan: dict) -> str:
    out = [f"recipe {plan['name']} ({plan['recipe']})",
           f"  base model: {plan['base_model']}   method: {plan['method']}   precision: {plan['precision']}",
           f"  output: {plan['output_dir']}"]
    for i, s in enumerate(plan["stages"], 1):
        out.append(f"stage {i}: {s['name']}  (from {s['init_from']})" + (f"  {s['kind']}" if s["kind"] != "sft" else ""))
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
