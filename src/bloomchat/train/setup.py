"""Setting a stage up: where its weights come from, the model (LoRA or full), the optimizer, the
data splits. Every check that can refuse a stage runs here, before the first step."""

from __future__ import annotations

from pathlib import Path

import torch

from bloomchat.errors import BloomchatError
from bloomchat.train.data import PackedSplit
from bloomchat.train.mfu import ModelShape
from bloomchat.train.packing_attn import install_packed_attention, is_bloom
from bloomchat.train.plan import linear_module_names, missing_lora_targets
from bloomchat.train.recipe import Recipe, Stage


def init_source(recipe: Recipe, idx: int, stage: Stage) -> str:
    """The weights a stage starts from: the base, a finished stage's model, or a path / hub id."""
    if stage.init_from == "base":
        return recipe.base_model
    if stage.init_from == "previous":
        return str(recipe.stage_dir(recipe.stages[idx - 1]) / "model")
    for s in recipe.stages[:idx]:
        if s.name == stage.init_from:
            return str(recipe.stage_dir(s) / "model")
    return stage.init_from


def _mismatch(tokenizer, vocab: int, src: str) -> BloomchatError:
    return BloomchatError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}: "
                          "they do not belong together (set `tokenizer:` in the recipe to the model's own)", where=src)


def check_vocab(src: str, tokenizer) -> None:
    """Refuse a tokenizer with ids beyond the model's embedding before any data is prepared."""
    from transformers import AutoConfig

    try:
        vocab = AutoConfig.from_pretrained(src).vocab_size
    except (OSError, ValueError) as e:
        raise BloomchatError(f"cannot load model config: {str(e).splitlines()[0]}", where=src) from None
    if vocab is not None and len(tokenizer) > vocab:
        raise _mismatch(tokenizer, vocab, src)


def embedding_rows(model) -> int:
    """Rows of the input embedding; under DeepSpeed ZeRO-3 the local tensor is an empty shard and
    the full shape is kept in `ds_shape`."""
    w = model.get_input_embeddings().weight
    return int(getattr(w, "ds_shape", w.shape)[0])


def load_base(src: str, tokenizer, gradient_checkpointing: bool):
    from bloomchat.models import load_model

    model = load_model(src, dtype="float32")
    vocab = embedding_rows(model)
    if len(tokenizer) > vocab:
        raise _mismatch(tokenizer, vocab, src)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def add_lora(model, recipe: Recipe):
    from peft import LoraConfig, get_peft_model

    cfg = recipe.lora
    missing = missing_lora_targets(model, list(cfg.target_modules))
    if missing:
        raise BloomchatError(f"LoRA target module(s) {', '.join(missing)} not in this model; its linear layers "
                             f"are: {', '.join(linear_module_names(model))}",
                             where=f"{recipe.path} lora.target_modules")
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha,
                                            lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)))


def setup_model(recipe: Recipe, init: str, tokenizer, train_split: PackedSplit, shards: Path):
    """The stage's model in training mode, packed attention installed, LoRA added when asked.
    Returns (model, is_bloom, shape): the shape (FLOPs per token) is the base model's, before LoRA."""
    model = load_base(init, tokenizer, recipe.gradient_checkpointing)
    shape = ModelShape.from_model(model)
    vocab = embedding_rows(model)
    if train_split.stats.max_id >= vocab:
        raise BloomchatError(f"shards hold token id {train_split.stats.max_id}, outside the model's vocabulary of "
                             f"{vocab}", where=str(shards))
    bloom = is_bloom(model)
    try:
        install_packed_attention(model, kernel=recipe.attention)
    except ValueError as e:  # e.g. attention: flex on a bloomchat without that kernel
        raise BloomchatError(str(e), where=f"{recipe.path} attention") from None
    if recipe.method == "lora":
        model = add_lora(model, recipe)
    model.train()
    return model, bloom, shape


def make_optimizer(model, stage: Stage):
    """AdamW; no weight decay on biases and LayerNorm weights (as transformers.Trainer does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "layernorm" in name.lower() or "ln_f" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr, betas=tuple(stage.adam_betas),
                             eps=stage.adam_eps)


def open_splits(shards: Path, stage_dir: Path, accelerator, split_cls: type = PackedSplit,
                unit: str = "rows") -> tuple[PackedSplit, PackedSplit | None]:
    """The training split and, when the shards have one, the dev split (Arrow cache in the stage);
    `split_cls` PairSplit for a preference stage's packed pairs."""
    with accelerator.main_process_first():
        train = split_cls(shards, "train", cache_dir=stage_dir / "cache")
        dev = (split_cls(shards, "dev", cache_dir=stage_dir / "cache")
               if any((shards / "dev").glob("*.parquet")) else None)
    if len(train) == 0:
        raise BloomchatError(f"the stage's training split has no {unit}", where=str(shards))
    return train, dev


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0
