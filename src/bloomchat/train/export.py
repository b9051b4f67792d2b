"""A stage's final model in HF layout (safetensors, tokenizer with the chat template, model card),
written to a temp folder and renamed into place, so a crash never leaves half a model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bloomchat.chat_format import CHAT_TEMPLATE
from bloomchat.train.faults import is_write_fault, write_fault, writing
from bloomchat.train.packing_attn import uninstall_packed_attention
from bloomchat.train.recipe import Recipe


def untie(state_dict: dict, model) -> dict:
    """A gathered FSDP / ZeRO-3 state dict holds tied weights (lm_head = embeddings) as separate
    copies, which transformers then writes twice; drop the tied ones as an unsharded save does."""
    tied = model.get_expanded_tied_weights_keys(all_submodels=True) if hasattr(
        model, "get_expanded_tied_weights_keys") else {}
    return {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}


def _write(model, tokenizer, tmp: Path, state_dict: dict | None, card: str) -> None:
    from bloomchat.models import save_pretrained

    # sharded weights, gathered: the model object holds only shards
    save_pretrained(model, tokenizer, tmp, state_dict=None if state_dict is None else untie(state_dict, model))
    (tmp / "README.md").write_text(card, encoding="utf-8")


def export_model(accelerator, model, tokenizer, recipe: Recipe, stage_dir: Path, card: str) -> Path:
    """Final model of the stage (LoRA merged into the base) in STAGE/model; every process calls this."""
    sharded = accelerator.distributed_type.name in ("DEEPSPEED", "FSDP")
    state_dict = accelerator.get_state_dict(model) if sharded and recipe.method == "full" else None
    out = stage_dir / "model"
    if accelerator.is_main_process:
        tmp = stage_dir / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        m = accelerator.unwrap_model(model)
        if recipe.method == "lora":
            m = m.merge_and_unload()
        uninstall_packed_attention(m)
        template = tokenizer.chat_template
        if recipe.chat_format == "bloomchat":  # the format it was trained in, whatever the base's template
            tokenizer.chat_template = CHAT_TEMPLATE
        try:
            _write(m, tokenizer, tmp, state_dict, card)
        except Exception as e:  # a full disk: OSError, or SafetensorError from safetensors
            shutil.rmtree(tmp, ignore_errors=True)
            if not is_write_fault(e):
                raise
            raise write_fault("the stage's model", out, e) from None
        finally:
            tokenizer.chat_template = template
        with writing("the stage's model", out):
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    accelerator.wait_for_everyone()
    return out
