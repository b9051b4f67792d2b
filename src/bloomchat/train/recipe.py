"""Training recipes: one YAML file names the base model and every stage; checked fully on load.

    from bloomchat.train import load_recipe
    recipe = load_recipe("recipes/demo.yaml", vars={"workdir": "/tmp/demo"})

A recipe is validated before anything runs: unknown keys, wrong types, values out of range,
files that do not exist and settings that cannot work together (a global batch that the
micro-batch and process count do not divide, a stage starting from a stage that does not come
before it ...) are errors that name the key and its line in the file. `${name}` placeholders are
filled from `vars` (`bloomchat train --set name=value`; `${name:-default}` has a default); relative paths resolve against the
recipe file's folder, so a recipe works from any working directory.
"""

from __future__ import annotations

import glob
import os
import re
import types
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from bloomchat.errors import BloomchatError
from bloomchat.pack.options import LossOn, Overlong, Packing, pack_setting

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${name} or ${name:-default}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RAW_SOURCES = ("oig", "dolly", "oasst1", "jsonl")


class _FromVar(str):
    """A value that was wholly one `${name}` placeholder: it takes the type of its field
    (`max_steps: ${steps}` with `--set steps=100` is the integer 100)."""


class _LineDict(dict):
    """A mapping that remembers the line of each key, for error messages."""

    lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    out = _LineDict()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise BloomchatError(f"key {key!r} appears twice", where=f"line {key_node.start_mark.line + 1}")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _doc(text: str, default: Any = MISSING, *, factory: Any = MISSING) -> Any:
    """A recipe key: its one-line doc travels with the field (validation, hints, docs)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


# Every recipe setting is declared once, here: its type (Literal = the allowed values), default and
# doc. Validation (types, allowed values, defaults, unknown keys) is derived from these classes;
# only range checks and checks across keys are written out in _check_stage / recipe_from_dict.

@dataclass
class LoraSettings:
    r: int = _doc("LoRA rank", 16)
    alpha: int = _doc("LoRA scaling numerator (scale = alpha / r)", 32)
    dropout: float = _doc("dropout on the LoRA input", 0.05)
    target_modules: list[str] = _doc(
        "linear layers to adapt, by name; default: BLOOM's fused q/k/v, attention output and MLP projections",
        factory=lambda: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])


@dataclass
class StageData:
    """Either packed shards (`shards`) or raw sources that the stage prepares and packs itself."""

    shards: Path | None = _doc("a packed-shards directory (bloomchat pack); excludes raw sources", None)
    oig: list[Path] = _doc("OIG unified_*.jsonl[.gz] files (globs allowed)", factory=list)
    dolly: list[Path] = _doc("databricks-dolly-15k JSONL files", factory=list)
    oasst1: list[Path] = _doc("OASST1 messages JSONL files", factory=list)
    jsonl: list[Path] = _doc("prepared JSONL files (DEVELOPERS.md contract)", factory=list)
    per_source: int = _doc("at most this many items per source file", 100_000)
    prepare: dict = _doc("extra options of bloomchat.data.prepare", factory=dict)
    # the packing keys: type, default and doc declared once, in bloomchat.pack.options.PackOptions
    max_seq_length: int = _doc(*pack_setting("max_seq_length"))
    packing: Packing = _doc(*pack_setting("packing"))
    dev_ratio: float = _doc(*pack_setting("dev_ratio"))
    num_proc: int = _doc(*pack_setting("num_proc"))
    loss_on: LossOn = _doc(*pack_setting("loss_on"))
    overlong: Overlong = _doc(*pack_setting("overlong"))
    pairs: list[Path] = _doc("prepared-pairs JSONL files (bloomchat prepare-pairs; a kind: dpo stage's data)",
                             factory=list)

    @property
    def is_raw(self) -> bool:
        """Raw conversation sources that the stage prepares and packs (not shards, not pairs)."""
        return self.shards is None and not self.pairs

    def sources(self) -> dict[str, list[Path]]:
        return {s: list(getattr(self, s)) for s in RAW_SOURCES if getattr(self, s)}


@dataclass
class Stage:
    name: str = _doc("stage name, also its output folder")
    data: StageData = _doc("what the stage trains on")
    epochs: float = _doc("passes over the training split (fractions allowed)", 1)
    max_steps: int | None = _doc("stop after this many optimizer steps (null: epochs decide)", None)
    lr: float = _doc("peak learning rate", 1e-5)
    lr_schedule: Literal["constant", "linear", "cosine"] = _doc("learning-rate shape after warmup", "constant")
    lr_end_ratio: float = _doc("linear/cosine decay ends at lr x this (BLOOMChat: 0.1)", 0.0)
    warmup_steps: int = _doc("linear warmup steps", 0)
    weight_decay: float = _doc("AdamW weight decay (not on biases and norms)", 0.1)
    max_grad_norm: float | None = _doc("gradient clipping norm (null: none)", 1.0)
    adam_betas: list[float] = _doc("AdamW betas", factory=lambda: [0.9, 0.999])
    adam_eps: float = _doc("AdamW epsilon", 1e-8)
    global_batch_size: int = _doc("rows per optimizer step, over all processes", 128)
    micro_batch_size: int = _doc("rows per forward pass per process", 1)
    prompt_loss_weight: float = _doc("loss weight of non-reply tokens (BLOOMChat: 0)", 0.0)
    save_every_steps: int = _doc("checkpoint interval (0: only at the end)", 0)
    keep_checkpoints: int = _doc("checkpoints kept on disk", 2)
    log_every_steps: int = _doc("metrics line interval", 1)
    init_from: str = _doc("previous | base | an earlier stage's name | a model directory", "previous")
    kind: Literal["sft", "dpo"] = _doc(
        "sft: next-token loss on replies; dpo: a preference loss on pairs (data.pairs), see `loss`", "sft")
    loss: Literal["dpo", "ipo", "orpo", "simpo"] = _doc(
        "preference loss (kind: dpo): dpo and ipo against the stage's initial weights, orpo and simpo without "
        "a reference", "dpo")
    beta: float = _doc("dpo/ipo: weight of the tie to the reference (ipo's tau); orpo: lambda of the odds-ratio "
                       "term; simpo: reward scale (its paper: 2 to 2.5)", 0.1)
    label_smoothing: float = _doc("dpo/simpo: share of preferences taken as flipped (conservative DPO), in "
                                  "[0, 0.5)", 0.0)
    simpo_gamma: float = _doc("simpo: target reward margin gamma", 0.5)


@dataclass
class Recipe:
    name: str = _doc("recipe name")
    base_model: str = _doc("hub name or local directory of the model to fine-tune")
    output_dir: Path = _doc("where every stage writes its folder")
    stages: list[Stage] = _doc("the stages, in order")
    tokenizer: str | None = _doc("tokenizer, when not the base model's", None)
    seed: int = _doc("seed of data order and initialisation", 42)
    method: Literal["full", "lora"] = _doc("train all weights, or a LoRA adapter merged on export", "full")
    lora: LoraSettings | None = _doc("LoRA settings (method: lora)", None)
    precision: Literal["fp32", "bf16", "fp16"] = _doc("mixed precision of training", "fp32")
    gradient_checkpointing: bool = _doc("recompute activations in the backward pass (less memory)", False)
    attention: Literal["sdpa", "eager", "flex"] = _doc("attention kernel of packed training", "sdpa")
    chat_format: Literal["bloomchat", "base"] = _doc(
        "bloomchat: train and export <human>/<bot>; base: the base model's own chat template", "bloomchat")
    path: Path | None = None
    vars: dict = field(default_factory=dict)

    def stage_dir(self, stage: Stage) -> Path:
        return self.output_dir / stage.name


def recipe_keys(cls) -> dict[str, Any]:
    """The YAML keys of a settings class: name -> dataclass field (those with a doc)."""
    return {f.name: f for f in fields(cls) if "doc" in f.metadata}


def _default(f) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


# ---------------------------------------------------------------------------------------------
# validation helpers

class _Ctx:
    def __init__(self, path: Path | None):
        self.path = path

    def err(self, msg: str, key: str, mapping: Any = None, leaf: str | None = None,
            line: int | None = None) -> BloomchatError:
        if isinstance(mapping, _LineDict) and leaf is not None:
            line = mapping.lines.get(leaf)
        where = str(self.path) if self.path else "recipe"
        if line:
            where += f":{line}"
        return BloomchatError(msg, where=f"{where} {key}")


_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a mapping"}


def _typed(ctx, mapping, key, keypath, typ, *, optional=False):
    v = mapping[key]
    if isinstance(v, _FromVar):
        v = _coerce(v, typ, optional)
    if v is None and optional:
        return None
    ok = isinstance(v, typ) and not (typ in (int, float) and isinstance(v, bool))
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if typ is float and isinstance(v, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            v, ok = float(v), True
        except ValueError:
            pass
    if not ok:
        raise ctx.err(f"must be {_TYPES[typ]}{' or null' if optional else ''}, got {type(v).__name__} {v!r}",
                      keypath, mapping, key)
    return v


def _coerce(v: str, typ: type, optional: bool) -> Any:
    """A whole-placeholder value read as the field's type; left a string when it does not parse
    (the type check then names the field and the value)."""
    if optional and v.strip().lower() in ("null", "none", "~", ""):
        return None
    try:
        if typ is int:
            return int(v)
        if typ is float:
            return float(v)
        if typ is bool and v.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return v.strip().lower() in ("true", "yes", "1")
        if typ in (list, dict):
            parsed = yaml.safe_load(v)
            return parsed if isinstance(parsed, typ) else v
    except (ValueError, yaml.YAMLError):
        pass
    return str(v) if typ is str else v


def _check_keys(ctx, mapping, allowed, keypath):
    if not isinstance(mapping, dict):
        raise ctx.err(f"must be a mapping, got {type(mapping).__name__}", keypath)
    for k in mapping:
        if k not in allowed:
            near = [a for a in allowed if a.replace("_", "") == str(k).replace("_", "").lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(sorted(allowed))}"
            raise ctx.err(f"unknown key {k!r}{hint}", f"{keypath}.{k}" if keypath else str(k), mapping, k)


def _subst(ctx, value, vars, keypath, line=None):
    """Fill `${name}` placeholders everywhere in the parsed YAML."""
    if isinstance(value, str):
        whole = _VAR_RE.fullmatch(value) is not None

        def repl(m):
            if m.group(1) not in vars and m.group(2) is not None:
                return m.group(2)
            if m.group(1) not in vars:
                raise ctx.err(f"placeholder ${{{m.group(1)}}} has no value; pass --set {m.group(1)}=...", keypath,
                              line=line)
            return str(vars[m.group(1)])
        out = _VAR_RE.sub(repl, value)
        return _FromVar(out) if whole else out
    if isinstance(value, _LineDict):
        out = _LineDict({k: _subst(ctx, v, vars, f"{keypath}.{k}" if keypath else k, value.lines.get(k, line))
                         for k, v in value.items()})
        out.lines = value.lines
        return out
    if isinstance(value, dict):
        return {k: _subst(ctx, v, vars, f"{keypath}.{k}", line) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(ctx, v, vars, f"{keypath}[{i}]", line) for i, v in enumerate(value)]
    return value


def _resolve(base: Path, p: str) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base / q).resolve()


def _model_ref(base: Path, s: str) -> str:
    """A local directory (absolute, ./relative, or existing relative to the recipe) or a hub name."""
    if s.startswith(("/", "./", "../", "~")) or (base / s).exists():
        return str(_resolve(base, s))
    return s


def _files(ctx, base, patterns, keypath, mapping, key) -> list[Path]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ctx.err("must be a file path or a list of paths (globs allowed)", keypath, mapping, key)
    out: list[Path] = []
    for pat in patterns:
        full = _resolve(base, pat)
        hits = sorted(Path(h) for h in glob.glob(str(full))) if glob.has_magic(str(full)) else (
            [full] if full.exists() else [])
        if not hits:
            raise ctx.err(f"no file matches {str(full)!r}", keypath, mapping, key)
        out.extend(hits)
    return out


def _kind(tp) -> tuple[Any, bool, tuple | None]:
    """(base type, null allowed, allowed values) of a field's annotation."""
    optional = False
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional, tp = len(args) < len(get_args(tp)), args[0]
    if get_origin(tp) is Literal:
        return str, optional, get_args(tp)
    return (get_origin(tp) or tp), optional, None


def _value(ctx, mapping, key, keypath, tp) -> Any:
    base, optional, choices = _kind(tp)
    v = _typed(ctx, mapping, key, keypath, base, optional=optional)
    if choices is not None and v is not None and v not in choices:
        raise ctx.err(f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}", keypath, mapping, key)
    return v


def _read(ctx, cls, mapping, keypath, *, skip=()) -> dict[str, Any]:
    """The typed values of `cls`'s recipe keys present in `mapping` (all but `skip`)."""
    hints = get_type_hints(cls)
    return {k: _value(ctx, mapping, k, f"{keypath}.{k}" if keypath else k, hints[k])
            for k in recipe_keys(cls) if k in mapping and k not in skip}


#: StageData keys that shape the packing (an error next to already packed `shards`).
_PACK_ONLY = tuple(k for k in recipe_keys(StageData) if k not in (*RAW_SOURCES, "shards", "num_proc", "pairs"))
#: Stage keys that only a preference stage (kind: dpo) reads.
PREFERENCE_KEYS = ("loss", "beta", "label_smoothing", "simpo_gamma")


def _parse_data(ctx, d, base, keypath) -> StageData:
    _check_keys(ctx, d, set(recipe_keys(StageData)), keypath)
    sd = StageData(**_read(ctx, StageData, d, keypath, skip=(*RAW_SOURCES, "shards", "pairs")))
    for s in (*RAW_SOURCES, "pairs"):
        if s in d:
            setattr(sd, s, _files(ctx, base, d[s], f"{keypath}.{s}", d, s))
    if sd.pairs and (sd.sources() or "shards" in d):
        raise ctx.err("preference 'pairs' are a stage's only data: no shards or oig/dolly/oasst1/jsonl next to "
                      "them", f"{keypath}.pairs", d, "pairs")
    if "shards" in d:
        if sd.sources():
            raise ctx.err("give either packed 'shards' or raw sources (oig/dolly/oasst1/jsonl), not both",
                          f"{keypath}.shards", d, "shards")
        p = _resolve(base, _typed(ctx, d, "shards", f"{keypath}.shards", str))
        if not (p / "stats.json").exists() or not any((p / "train").glob("*.parquet")):
            raise ctx.err(f"not a packed-shards directory (needs stats.json and train/*.parquet): {p}",
                          f"{keypath}.shards", d, "shards")
        sd.shards = p
        for k in _PACK_ONLY:
            if k in d:
                raise ctx.err("only applies to raw sources; these shards are already packed",
                              f"{keypath}.{k}", d, k)
    elif not sd.sources() and not sd.pairs:
        raise ctx.err("names no data: give 'shards', 'pairs' or at least one of oig, dolly, oasst1, jsonl", keypath)
    if sd.max_seq_length < 16:
        raise ctx.err("must be at least 16", f"{keypath}.max_seq_length", d, "max_seq_length")
    if not 0.0 <= sd.dev_ratio < 1.0:
        raise ctx.err("must be in [0, 1)", f"{keypath}.dev_ratio", d, "dev_ratio")
    if sd.per_source < 1 or sd.num_proc < 1:
        raise ctx.err("per_source and num_proc must be >= 1", keypath)
    sd.prepare = dict(sd.prepare)
    _check_prepare(ctx, sd.prepare, d, keypath)
    return sd


def _check_prepare(ctx, prepare: dict, d, keypath) -> None:
    from bloomchat.data import DEFAULT_OPTIONS

    for k in prepare:
        if k not in DEFAULT_OPTIONS:
            raise ctx.err(f"unknown prepare option {k!r}; known: {', '.join(DEFAULT_OPTIONS)}",
                          f"{keypath}.prepare.{k}", d.get("prepare"), k)


def _parse_stage(ctx, raw, defaults, base, keypath, earlier: list[str], world_size: int) -> Stage:
    _check_keys(ctx, raw, set(recipe_keys(Stage)), keypath)
    merged = _LineDict({**defaults, **raw})
    merged.lines = {**getattr(defaults, "lines", {}), **getattr(raw, "lines", {})}
    if "name" not in merged:
        raise ctx.err("is missing (every stage needs a name)", f"{keypath}.name")
    if "data" not in raw:
        raise ctx.err("is missing (what does this stage train on?)", f"{keypath}.data")
    st = Stage(data=_parse_data(ctx, raw["data"], base, f"{keypath}.data"),
               **_read(ctx, Stage, merged, keypath, skip=("data",)))

    def bad(key, msg):
        return ctx.err(msg, f"{keypath}.{key}", merged, key)

    _check_stage(st, bad, earlier, world_size)
    _check_preference(st, raw, bad, ctx, keypath)
    if st.init_from not in ("previous", "base") and st.init_from not in earlier:
        p = _resolve(base, st.init_from)
        if not (p / "config.json").exists():
            raise bad("init_from", f"{st.init_from!r} is neither 'previous', 'base', an earlier stage "
                      f"({', '.join(earlier) or 'none'}) nor a model directory")
        st.init_from = str(p)
    return st


def _check_stage(st: Stage, bad, earlier: list[str], world_size: int) -> None:
    """Ranges and combinations (the types are already checked)."""
    if not _NAME_RE.match(st.name):
        raise bad("name", f"{st.name!r} is not a valid name (letters, digits, '_', '.', '-')")
    if st.name in earlier:
        raise bad("name", f"stage name {st.name!r} is used twice")
    for key, ok, msg in (
            ("epochs", st.epochs > 0, "must be > 0"),
            ("max_steps", st.max_steps is None or st.max_steps >= 1, "must be >= 1 or null"),
            ("lr", 0 < st.lr <= 1, f"{st.lr} is not a usable learning rate (0 < lr <= 1)"),
            ("lr_end_ratio", 0.0 <= st.lr_end_ratio <= 1.0, "must be in [0, 1] (the final lr as a fraction of lr)"),
            ("lr_end_ratio", not (st.lr_end_ratio and st.lr_schedule == "constant"),
             "applies to a linear or cosine lr_schedule, not constant"),
            ("warmup_steps", st.warmup_steps >= 0, "must be >= 0"),
            ("weight_decay", st.weight_decay >= 0, "must be >= 0"),
            ("max_grad_norm", st.max_grad_norm is None or st.max_grad_norm > 0, "must be > 0 or null (no clipping)"),
            ("adam_betas", len(st.adam_betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1
                                                           for b in st.adam_betas), "must be two numbers in [0, 1)"),
            ("micro_batch_size", st.micro_batch_size >= 1, "must be >= 1"),
            ("global_batch_size", st.global_batch_size >= 1, "must be >= 1"),
            ("global_batch_size", st.global_batch_size % (st.micro_batch_size * world_size) == 0,
             f"{st.global_batch_size} is not a multiple of micro_batch_size {st.micro_batch_size} x {world_size} "
             "process(es); gradient accumulation needs a whole number"),
            ("prompt_loss_weight", 0.0 <= st.prompt_loss_weight <= 1.0, "must be in [0, 1] (BLOOMChat used 0)"),
            ("save_every_steps", st.save_every_steps >= 0, "must be >= 0 (0 = only at the end of the stage)"),
            ("keep_checkpoints", st.keep_checkpoints >= 1, "must be >= 1"),
            ("log_every_steps", st.log_every_steps >= 1, "must be >= 1")):
        if not ok:
            raise bad(key, msg)


def _check_preference(st: Stage, raw, bad, ctx, keypath: str) -> None:
    """A preference stage's keys, data and ranges; an sft stage may not set them."""
    d = raw["data"]
    if st.kind == "sft":
        for k in PREFERENCE_KEYS:
            if k in raw:
                raise bad(k, "applies to a preference stage; set kind: dpo")
        if st.data.pairs:
            raise ctx.err("are preference pairs; a stage training on them needs kind: dpo", f"{keypath}.data.pairs",
                          d, "pairs")
        return
    if not st.data.pairs:
        raise bad("kind", "a kind: dpo stage trains on data.pairs (prepared-pairs JSONL, bloomchat prepare-pairs)")
    for key, ok, msg in (
            ("beta", st.beta > 0, "must be > 0"),
            ("label_smoothing", 0.0 <= st.label_smoothing < 0.5, "must be in [0, 0.5)"),
            ("label_smoothing", st.label_smoothing == 0.0 or st.loss in ("dpo", "simpo"),
             f"applies to loss dpo or simpo, not {st.loss}"),
            ("simpo_gamma", st.simpo_gamma >= 0, "must be >= 0"),
            ("prompt_loss_weight", st.prompt_loss_weight == 0.0,
             "must be 0 in a preference stage (the loss is on the two replies only)")):
        if not ok:
            raise bad(key, msg)
    for k in ("loss_on", "overlong"):
        if k in d:
            raise ctx.err("does not apply to pairs (loss on the two replies; a pair longer than max_seq_length is "
                          "dropped and counted)", f"{keypath}.data.{k}", d, k)
    if st.data.packing not in ("greedy", "single"):
        raise ctx.err("pairs pack 'greedy' (several pairs a row) or 'single' (one pair a row)",
                      f"{keypath}.data.packing", d, "packing")


def world_size_from_env() -> int:
    """Processes this run will have: accelerate launch / torchrun set WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_recipe(path: str | Path, *, vars: dict[str, str] | None = None, world_size: int | None = None,
                only_stage: str | None = None) -> Recipe:
    """Read and validate a recipe; every problem is a BloomchatError naming the key and line.

    `only_stage` keeps just that stage (as a first stage, from the base): `bloomchat prepare
    --recipe --stage` then needs only that stage's placeholders and files."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise BloomchatError("recipe file not found", where=str(path))
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise BloomchatError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    if only_stage is not None and isinstance(raw, dict) and isinstance(raw.get("stages"), list):
        kept = [st for st in raw["stages"] if isinstance(st, dict) and st.get("name") == only_stage]
        if not kept:
            names = ", ".join(str(st.get("name")) for st in raw["stages"] if isinstance(st, dict))
            raise BloomchatError(f"no stage named {only_stage!r} (stages: {names})", where=str(path))
        kept[0].pop("init_from", None)
        raw["stages"] = kept
    return recipe_from_dict(raw, base=path.parent, path=path, vars=vars, world_size=world_size)


def recipe_from_dict(raw: Any, *, base: Path, path: Path | None = None, vars: dict[str, str] | None = None,
                     world_size: int | None = None) -> Recipe:
    ctx = _Ctx(path)
    world_size = world_size or world_size_from_env()
    vars = dict(vars or {})
    if not isinstance(raw, dict):
        raise ctx.err("the recipe must be a YAML mapping", "(top level)")
    raw = _subst(ctx, raw, vars, "")
    top = recipe_keys(Recipe)
    _check_keys(ctx, raw, set(top) | {"defaults"}, "")
    for req, f in top.items():
        if _default(f) is MISSING and req not in raw:
            raise ctx.err("is missing", req)
    kw = _read(ctx, Recipe, raw, "", skip=("output_dir", "stages", "lora"))
    kw["base_model"] = _model_ref(base, kw["base_model"])
    if Path(kw["base_model"]).is_absolute() and not (Path(kw["base_model"]) / "config.json").exists():
        raise ctx.err(f"base model directory {kw['base_model']} does not exist or has no config.json",
                      "base_model", raw, "base_model")
    if kw.get("tokenizer") is not None:
        kw["tokenizer"] = _model_ref(base, kw["tokenizer"])
        if Path(kw["tokenizer"]).is_absolute() and not Path(kw["tokenizer"]).exists():
            raise ctx.err(f"tokenizer directory {kw['tokenizer']} does not exist", "tokenizer", raw, "tokenizer")
    kw["output_dir"] = _resolve(base, _typed(ctx, raw, "output_dir", "output_dir", str))
    kw["lora"] = _parse_lora(ctx, raw, kw.get("method", "full"))
    kw["stages"] = _parse_stages(ctx, raw, base, world_size)
    return Recipe(**kw, path=path, vars=vars)


def _parse_lora(ctx, raw, method: str) -> LoraSettings | None:
    if "lora" not in raw:
        return LoraSettings() if method == "lora" else None
    if method != "lora":
        raise ctx.err("is given but method is 'full'; set method: lora or remove it", "lora", raw, "lora")
    _check_keys(ctx, raw["lora"], set(recipe_keys(LoraSettings)), "lora")
    lora = LoraSettings(**_read(ctx, LoraSettings, raw["lora"], "lora"))
    if lora.r < 1 or lora.alpha < 1 or not 0 <= lora.dropout < 1 or not lora.target_modules:
        raise ctx.err("needs r >= 1, alpha >= 1, 0 <= dropout < 1 and target_modules", "lora", raw, "lora")
    return lora


def _parse_stages(ctx, raw, base: Path, world_size: int) -> list[Stage]:
    defaults = raw.get("defaults") or _LineDict()
    if "defaults" in raw:
        _check_keys(ctx, defaults, set(recipe_keys(Stage)) - {"name", "data"}, "defaults")
    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ctx.err("must be a non-empty list of stages", "stages", raw, "stages")
    stages: list[Stage] = []
    for i, s in enumerate(stages_raw):
        stages.append(_parse_stage(ctx, s, defaults, base, f"stages[{i}]", [x.name for x in stages], world_size))
    if stages[0].init_from == "previous":
        stages[0].init_from = "base"
    return stages
