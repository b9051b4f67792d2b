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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bloomchat.errors import BloomchatError

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


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # BLOOM's fused q/k/v projection and the attention output + MLP projections
    target_modules: list = field(default_factory=lambda: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])


@dataclass
class StageData:
    """Either packed shards (`shards`) or raw sources that the stage prepares and packs itself."""

    shards: Path | None = None
    oig: list = field(default_factory=list)
    dolly: list = field(default_factory=list)
    oasst1: list = field(default_factory=list)
    jsonl: list = field(default_factory=list)
    per_source: int = 100_000
    prepare: dict = field(default_factory=dict)  # extra options of bloomchat.data.prepare
    max_seq_length: int = 2048
    packing: str = "greedy"
    dev_ratio: float = 0.0
    num_proc: int = 1
    loss_on: str = "replies"     # replies (BLOOMChat's paper) | conversation (BLOOMChat's scripts)
    overlong: str = "split"      # a conversation longer than max_seq_length: split | drop

    @property
    def is_raw(self) -> bool:
        return self.shards is None

    def sources(self) -> dict[str, list[Path]]:
        return {s: list(getattr(self, s)) for s in RAW_SOURCES if getattr(self, s)}


@dataclass
class Stage:
    name: str
    data: StageData
    epochs: float = 1
    max_steps: int | None = None
    lr: float = 1e-5
    lr_schedule: str = "constant"
    lr_end_ratio: float = 0.0  # linear/cosine decay ends at lr x this (BLOOMChat: 0.1)
    warmup_steps: int = 0
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    global_batch_size: int = 128
    micro_batch_size: int = 1
    prompt_loss_weight: float = 0.0
    save_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every_steps: int = 1
    init_from: str = "previous"


@dataclass
class Recipe:
    name: str
    base_model: str
    output_dir: Path
    stages: list[Stage]
    tokenizer: str | None = None
    seed: int = 42
    method: str = "full"
    lora: LoraSettings | None = None
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    attention: str = "sdpa"
    chat_format: str = "bloomchat"  # bloomchat: train + export <human>/<bot>; base: the base's own template
    path: Path | None = None
    vars: dict = field(default_factory=dict)

    def stage_dir(self, stage: Stage) -> Path:
        return self.output_dir / stage.name


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


def _parse_data(ctx, d, base, keypath) -> StageData:
    allowed = {f.name for f in fields(StageData)}
    _check_keys(ctx, d, allowed, keypath)
    sd = StageData()
    for s in RAW_SOURCES:
        if s in d:
            setattr(sd, s, _files(ctx, base, d[s], f"{keypath}.{s}", d, s))
    if "shards" in d:
        if sd.sources():
            raise ctx.err("give either packed 'shards' or raw sources (oig/dolly/oasst1/jsonl), not both",
                          f"{keypath}.shards", d, "shards")
        p = _resolve(base, _typed(ctx, d, "shards", f"{keypath}.shards", str))
        if not (p / "stats.json").exists() or not any((p / "train").glob("*.parquet")):
            raise ctx.err(f"not a packed-shards directory (needs stats.json and train/*.parquet): {p}",
                          f"{keypath}.shards", d, "shards")
        sd.shards = p
    elif not sd.sources():
        raise ctx.err("names no data: give 'shards' or at least one of oig, dolly, oasst1, jsonl", keypath)
    for k, typ in (("per_source", int), ("max_seq_length", int), ("packing", str), ("dev_ratio", float),
                   ("num_proc", int), ("prepare", dict), ("loss_on", str), ("overlong", str)):
        if k in d:
            if sd.shards is not None and k != "num_proc":
                raise ctx.err("only applies to raw sources; these shards are already packed",
                              f"{keypath}.{k}", d, k)
            setattr(sd, k, _typed(ctx, d, k, f"{keypath}.{k}", typ))
    if sd.max_seq_length < 16:
        raise ctx.err("must be at least 16", f"{keypath}.max_seq_length", d, "max_seq_length")
    for k, allowed in (("loss_on", ("replies", "conversation")), ("overlong", ("split", "drop"))):
        if getattr(sd, k) not in allowed:
            raise ctx.err(f"must be one of {', '.join(allowed)}", f"{keypath}.{k}", d, k)
    if not 0.0 <= sd.dev_ratio < 1.0:
        raise ctx.err("must be in [0, 1)", f"{keypath}.dev_ratio", d, "dev_ratio")
    if sd.per_source < 1 or sd.num_proc < 1:
        raise ctx.err("per_source and num_proc must be >= 1", keypath)
    sd.prepare = dict(sd.prepare)
    try:
        from bloomchat.data import DEFAULT_OPTIONS
    except ImportError:  # pragma: no cover
        DEFAULT_OPTIONS = None
    if DEFAULT_OPTIONS is not None:
        for k in sd.prepare:
            if k not in DEFAULT_OPTIONS:
                raise ctx.err(f"unknown prepare option {k!r}; known: {', '.join(DEFAULT_OPTIONS)}",
                              f"{keypath}.prepare.{k}", d.get("prepare"), k)
    return sd


_STAGE_TYPES: dict[str, tuple[type, bool]] = {
    "name": (str, False), "epochs": (float, False), "max_steps": (int, True), "lr": (float, False),
    "lr_schedule": (str, False), "lr_end_ratio": (float, False), "warmup_steps": (int, False), "weight_decay": (float, False),
    "max_grad_norm": (float, True), "adam_betas": (list, False), "adam_eps": (float, False),
    "global_batch_size": (int, False), "micro_batch_size": (int, False),
    "prompt_loss_weight": (float, False), "save_every_steps": (int, False),
    "keep_checkpoints": (int, False), "log_every_steps": (int, False), "init_from": (str, False),
}
_SCHEDULES = ("constant", "linear", "cosine")


def _parse_stage(ctx, raw, defaults, base, keypath, earlier: list[str], world_size: int) -> Stage:
    _check_keys(ctx, raw, set(_STAGE_TYPES) | {"data"}, keypath)
    merged = _LineDict({**defaults, **raw})
    merged.lines = {**getattr(defaults, "lines", {}), **getattr(raw, "lines", {})}
    if "name" not in merged:
        raise ctx.err("is missing (every stage needs a name)", f"{keypath}.name")
    if "data" not in raw:
        raise ctx.err("is missing (what does this stage train on?)", f"{keypath}.data")
    kw: dict[str, Any] = {}
    for k, (typ, opt) in _STAGE_TYPES.items():
        if k in merged:
            kw[k] = _typed(ctx, merged, k, f"{keypath}.{k}", typ, optional=opt)
    st = Stage(data=_parse_data(ctx, raw["data"], base, f"{keypath}.data"), **kw)

    def bad(key, msg):
        return ctx.err(msg, f"{keypath}.{key}", merged, key)

    if not _NAME_RE.match(st.name):
        raise bad("name", f"{st.name!r} is not a valid name (letters, digits, '_', '.', '-')")
    if st.name in earlier:
        raise bad("name", f"stage name {st.name!r} is used twice")
    if st.epochs <= 0:
        raise bad("epochs", "must be > 0")
    if st.max_steps is not None and st.max_steps < 1:
        raise bad("max_steps", "must be >= 1 or null")
    if st.lr <= 0 or st.lr > 1:
        raise bad("lr", f"{st.lr} is not a usable learning rate (0 < lr <= 1)")
    if st.lr_schedule not in _SCHEDULES:
        raise bad("lr_schedule", f"must be one of {', '.join(_SCHEDULES)}")
    if not 0.0 <= st.lr_end_ratio <= 1.0:
        raise bad("lr_end_ratio", "must be in [0, 1] (the final lr as a fraction of lr)")
    if st.lr_end_ratio and st.lr_schedule == "constant":
        raise bad("lr_end_ratio", "applies to a linear or cosine lr_schedule, not constant")
    if st.warmup_steps < 0:
        raise bad("warmup_steps", "must be >= 0")
    if st.weight_decay < 0:
        raise bad("weight_decay", "must be >= 0")
    if st.max_grad_norm is not None and st.max_grad_norm <= 0:
        raise bad("max_grad_norm", "must be > 0 or null (no clipping)")
    if len(st.adam_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in st.adam_betas):
        raise bad("adam_betas", "must be two numbers in [0, 1)")
    if st.micro_batch_size < 1:
        raise bad("micro_batch_size", "must be >= 1")
    if st.global_batch_size < 1:
        raise bad("global_batch_size", "must be >= 1")
    if st.global_batch_size % (st.micro_batch_size * world_size):
        raise bad("global_batch_size", f"{st.global_batch_size} is not a multiple of micro_batch_size "
                  f"{st.micro_batch_size} x {world_size} process(es); gradient accumulation needs a whole number")
    if not 0.0 <= st.prompt_loss_weight <= 1.0:
        raise bad("prompt_loss_weight", "must be in [0, 1] (BLOOMChat used 0)")
    if st.save_every_steps < 0:
        raise bad("save_every_steps", "must be >= 0 (0 = only at the end of the stage)")
    if st.keep_checkpoints < 1:
        raise bad("keep_checkpoints", "must be >= 1")
    if st.log_every_steps < 1:
        raise bad("log_every_steps", "must be >= 1")
    if st.init_from not in ("previous", "base") and st.init_from not in earlier:
        p = _resolve(base, st.init_from)
        if not (p / "config.json").exists():
            raise bad("init_from", f"{st.init_from!r} is neither 'previous', 'base', an earlier stage "
                      f"({', '.join(earlier) or 'none'}) nor a model directory")
        st.init_from = str(p)
    return st


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


_TOP = {"name", "base_model", "tokenizer", "output_dir", "seed", "method", "lora", "precision",
        "gradient_checkpointing", "attention", "chat_format", "defaults", "stages"}


def recipe_from_dict(raw: Any, *, base: Path, path: Path | None = None, vars: dict[str, str] | None = None,
                     world_size: int | None = None) -> Recipe:
    ctx = _Ctx(path)
    world_size = world_size or world_size_from_env()
    vars = dict(vars or {})
    if not isinstance(raw, dict):
        raise ctx.err("the recipe must be a YAML mapping", "(top level)")
    raw = _subst(ctx, raw, vars, "")
    _check_keys(ctx, raw, _TOP, "")
    for req in ("name", "base_model", "output_dir", "stages"):
        if req not in raw:
            raise ctx.err("is missing", req)
    name = _typed(ctx, raw, "name", "name", str)
    base_model = _model_ref(base, _typed(ctx, raw, "base_model", "base_model", str))
    if Path(base_model).is_absolute() and not (Path(base_model) / "config.json").exists():
        raise ctx.err(f"base model directory {base_model} does not exist or has no config.json",
                      "base_model", raw, "base_model")
    tokenizer = None
    if raw.get("tokenizer") is not None:
        tokenizer = _model_ref(base, _typed(ctx, raw, "tokenizer", "tokenizer", str))
        if Path(tokenizer).is_absolute() and not Path(tokenizer).exists():
            raise ctx.err(f"tokenizer directory {tokenizer} does not exist", "tokenizer", raw, "tokenizer")
    out = _resolve(base, _typed(ctx, raw, "output_dir", "output_dir", str))
    seed = _typed(ctx, raw, "seed", "seed", int) if "seed" in raw else 42
    method = _typed(ctx, raw, "method", "method", str) if "method" in raw else "full"
    if method not in ("full", "lora"):
        raise ctx.err("must be 'full' or 'lora'", "method", raw, "method")
    lora = None
    if "lora" in raw:
        if method != "lora":
            raise ctx.err("is given but method is 'full'; set method: lora or remove it", "lora", raw, "lora")
        _check_keys(ctx, raw["lora"], {f.name for f in fields(LoraSettings)}, "lora")
        lk = {}
        for k, typ in (("r", int), ("alpha", int), ("dropout", float), ("target_modules", list)):
            if k in raw["lora"]:
                lk[k] = _typed(ctx, raw["lora"], k, f"lora.{k}", typ)
        lora = LoraSettings(**lk)
        if lora.r < 1 or lora.alpha < 1 or not 0 <= lora.dropout < 1 or not lora.target_modules:
            raise ctx.err("needs r >= 1, alpha >= 1, 0 <= dropout < 1 and target_modules", "lora", raw, "lora")
    elif method == "lora":
        lora = LoraSettings()
    precision = _typed(ctx, raw, "precision", "precision", str) if "precision" in raw else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ctx.err("must be fp32, bf16 or fp16", "precision", raw, "precision")
    gc = _typed(ctx, raw, "gradient_checkpointing", "gradient_checkpointing", bool) if "gradient_checkpointing" in raw else False
    attention = _typed(ctx, raw, "attention", "attention", str) if "attention" in raw else "sdpa"
    if attention not in ("sdpa", "eager"):
        raise ctx.err("must be 'sdpa' (fused, the default) or 'eager' (transformers' own BLOOM kernel)",
                      "attention", raw, "attention")
    chat_format = _typed(ctx, raw, "chat_format", "chat_format", str) if "chat_format" in raw else "bloomchat"
    if chat_format not in ("bloomchat", "base"):
        raise ctx.err("must be 'bloomchat' (<human>/<bot>, the default) or 'base' (the base model's own chat "
                      "template)", "chat_format", raw, "chat_format")
    defaults = raw.get("defaults") or _LineDict()
    if "defaults" in raw:
        _check_keys(ctx, defaults, set(_STAGE_TYPES) - {"name"}, "defaults")
    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ctx.err("must be a non-empty list of stages", "stages", raw, "stages")
    stages: list[Stage] = []
    for i, s in enumerate(stages_raw):
        stages.append(_parse_stage(ctx, s, defaults, base, f"stages[{i}]", [x.name for x in stages], world_size))
    if stages[0].init_from == "previous":
        stages[0].init_from = "base"
    return Recipe(name=name, base_model=base_model, output_dir=out, stages=stages, tokenizer=tokenizer,
                  seed=seed, method=method, lora=lora, precision=precision, gradient_checkpointing=gc,
                  attention=attention, chat_format=chat_format, path=path, vars=vars)
