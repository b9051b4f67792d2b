"""A stage's data as packed shards: used as given, or prepared + packed into the stage's folder.

Raw sources go through the same `bloomchat.data.prepare` and `bloomchat.pack.pack` that
`bloomchat prepare` / `bloomchat pack` run. The result is reused on the next run (and on
--resume) while a fingerprint of the inputs (file names, sizes, mtimes, options, tokenizer) is
unchanged, so a resumed stage trains on exactly the rows it started with.
"""

from __future__ import annotations

import json
from pathlib import Path

from bloomchat.errors import BloomchatError
from bloomchat.train.faults import writing
from bloomchat.train.recipe import Recipe, Stage

SPEC = "spec.json"


def _spec(recipe: Recipe, stage: Stage, tokenizer_fp: str) -> dict:
    d = stage.data
    files = {src: [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in paths]
             for src, paths in d.sources().items()}
    return {"files": files, "per_source": d.per_source, "prepare": d.prepare, "seed": recipe.seed,
            "max_seq_length": d.max_seq_length, "packing": d.packing, "dev_ratio": d.dev_ratio,
            "tokenizer": tokenizer_fp, **_format_options(recipe, stage, only_changed=True)}


#: Defaults of the packer's format options; a spec lists only the ones a recipe changes, so
#: shards packed before these options existed keep their fingerprint.
_FORMAT_DEFAULTS = {"chat_format": "bloomchat", "loss_on": "replies", "overlong": "split"}


def _format_options(recipe: Recipe, stage: Stage, *, only_changed: bool = False) -> dict:
    opts = {"chat_format": recipe.chat_format, "loss_on": stage.data.loss_on, "overlong": stage.data.overlong}
    return {k: v for k, v in opts.items() if not only_changed or v != _FORMAT_DEFAULTS[k]}


def _pack_kwargs(recipe: Recipe, stage: Stage, pack) -> dict:
    """The format options this packer takes (`chat_format`, `loss_on` are newer than `overlong`);
    a changed option that the packer cannot honour is an error, not silently the default."""
    import inspect

    named = {n for n, p in inspect.signature(pack).parameters.items() if p.kind is not p.VAR_KEYWORD}
    out = {}
    for k, v in _format_options(recipe, stage).items():
        if k in named:
            out[k] = v
        elif v != _FORMAT_DEFAULTS[k]:
            raise BloomchatError(f"{k}: {v} needs a bloomchat.pack.pack that accepts {k}= (this one does not)",
                                 where=f"{recipe.path} {k}")
    return out


def packed_dir(recipe: Recipe, stage: Stage) -> Path:
    if stage.data.pairs:
        return recipe.stage_dir(stage) / "data" / "pairs"
    return stage.data.shards if stage.data.shards is not None else recipe.stage_dir(stage) / "data" / "packed"


def ensure_pairs_packed(recipe: Recipe, stage: Stage, tokenizer, *, accelerator=None) -> Path:
    """The packed pairs of a preference stage (`bloomchat.pack.pairs`), rebuilt by the main process
    when the files, the packing options or the tokenizer changed."""
    from bloomchat.models import tokenizer_fingerprint
    from bloomchat.pack.pairs import pack_pairs

    d = stage.data
    out = packed_dir(recipe, stage)
    spec = {"pairs": [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in d.pairs],
            "max_seq_length": d.max_seq_length, "packing": d.packing, "dev_ratio": d.dev_ratio,
            "chat_format": recipe.chat_format, "tokenizer": tokenizer_fingerprint(tokenizer)}
    spec_path = out.parent / "pairs.spec.json"
    fresh = spec_path.exists() and json.loads(spec_path.read_text()) == spec and (out / "stats.json").exists()
    if (accelerator is None or accelerator.is_main_process) and not fresh:
        with writing("the stage's packed pairs", out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
            pack_pairs(d.pairs, tokenizer, out, max_seq_length=d.max_seq_length, packing=d.packing,
                       dev_ratio=d.dev_ratio, chat_format=recipe.chat_format)
            spec_path.write_text(json.dumps(spec, indent=1))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out


def ensure_packed(recipe: Recipe, stage: Stage, tokenizer, *, accelerator=None) -> tuple[Path, dict | None]:
    """Shards directory of the stage (built by the main process when needed) and prepare's summary."""
    from bloomchat.models import tokenizer_fingerprint

    if stage.data.shards is not None:
        return stage.data.shards, None
    from bloomchat.data.prepare import summary_path as summary_path_of
    data_dir = recipe.stage_dir(stage) / "data"
    out = data_dir / "packed"
    spec = _spec(recipe, stage, tokenizer_fingerprint(tokenizer))
    spec_path = data_dir / SPEC
    summary_path = summary_path_of(data_dir / "prepared.jsonl")  # prepare writes it, next to its output
    main = accelerator is None or accelerator.is_main_process
    fresh = spec_path.exists() and json.loads(spec_path.read_text()) == spec and (out / "stats.json").exists()
    if main and not fresh:
        with writing("the stage's prepared data", data_dir):
            _build(recipe, stage, tokenizer, data_dir, out)
            spec_path.write_text(json.dumps(spec, indent=1))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return out, summary


def _build(recipe: Recipe, stage: Stage, tokenizer, data_dir: Path, out: Path) -> None:
    from bloomchat.data import prepare
    from bloomchat.pack import pack

    d = stage.data
    data_dir.mkdir(parents=True, exist_ok=True)
    prepared = data_dir / "prepared.jsonl"
    prepare(out=prepared, oig=[str(p) for p in d.oig], dolly=[str(p) for p in d.dolly],
            oasst1=[str(p) for p in d.oasst1], jsonl=[str(p) for p in d.jsonl], seed=recipe.seed,
            per_source=d.per_source, **d.prepare)  # it writes prepared.summary.json itself
    pack([prepared], tokenizer, out, max_seq_length=d.max_seq_length, packing=d.packing,
         dev_ratio=d.dev_ratio, num_proc=d.num_proc, seed=recipe.seed, **_pack_kwargs(recipe, stage, pack))
