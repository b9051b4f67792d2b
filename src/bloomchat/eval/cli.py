"""`bloomchat eval run MODEL`: measure a model per language; `eval compare`: runs side by side.

    bloomchat eval run out/stage2 --task translation --data ../shared/data/flores101 --directions en-zh,zh-en --limit 200 -o runs/stage2
    bloomchat eval run out/stage2 --task mc --data ../shared/data/xwinograd/xwinograd.tsv -o runs/stage2
    bloomchat eval run out/stage2 --task mc --data ../shared/data/xcopa --mc-format lm-eval -o runs/stage2
    bloomchat eval run out/stage2 --task mgsm --data ../shared/data/mgsm --shots 8 -o runs/stage2
    bloomchat eval run out/stage2 --task chat --data ../shared/data/eval_prompts_vicuna80_12lang --guards both -o runs/stage2
    bloomchat eval run my-model --backend openai --base-url http://127.0.0.1:8000/v1 --task chat --data ../shared/data/belle_eval_set_zh -o runs/served
    bloomchat eval run out/stage2 --task fertility --data ../shared/data/flores101 -o runs/stage2
    bloomchat eval run JUDGE --task judge --data runs/base --data-b runs/stage2 -o runs/judge
    bloomchat eval run out/stage2 --spec tasks.yaml -o runs/stage2
    bloomchat eval compare runs/base runs/stage1 runs/stage2 -o runs/compare
    bloomchat eval convert ../shared/data/xwinograd/xwinograd.tsv --format xwinograd -o xwinograd.jsonl

`bloomchat eval MODEL --task ...` is short for `bloomchat eval run MODEL --task ...` (a model
directory named like a subcommand needs the long form). A run dir holds one model; further
runs into it add tasks. A killed run resumes where it stopped when started again with the
same command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bloomchat.errors import BloomchatError

TASK_KEYS = {
    "task", "data", "format", "name", "limit", "directions", "split", "shots", "prompt", "bleu_tokenize",
    "first_line", "langs", "lang", "norm", "mc_format", "guards", "greedy", "temperature", "top_p", "top_k",
    "repetition_penalty", "seed", "max_new_tokens", "degenerate_threshold", "tokenizer",
    "data_b", "prompts",
}
TASKS = ("translation", "mc", "mgsm", "chat", "fertility", "judge")
SUBCOMMANDS = ("run", "compare", "convert")


class _EvalParser(argparse.ArgumentParser):
    """`bloomchat eval MODEL ...` (no subcommand) parses as `bloomchat eval run MODEL ...`."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[2:] if args is None else args)
        if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
            args = ["run"] + args
        return super().parse_known_args(args, namespace)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="measure a model per language: translation, multiple choice, math, chat behaviour",
        description="bloomchat eval run MODEL --task translation|mc|mgsm|chat --data PATH -o RUNDIR\n"
                    "bloomchat eval compare RUN [RUN ...] [-o DIR]\n"
                    "bloomchat eval convert FILE --format xnli|xwinograd|xstorycloze|pawsx|xcopa -o OUT.jsonl\n\n"
                    "`bloomchat eval MODEL --task ...` is short for `bloomchat eval run MODEL --task ...`.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _EvalParser
    sub = p.add_subparsers(dest="eval_cmd", metavar="SUBCOMMAND", parser_class=argparse.ArgumentParser)
    _add_run(sub)
    _add_compare(sub)
    _add_convert(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _add_run(sub) -> None:
    from bloomchat.infer.cli import engine_arg

    p = sub.add_parser("run", help="evaluate one model into a run dir",
                       description="bloomchat eval run MODEL --task translation|mc|mgsm|chat|fertility|judge --data PATH -o RUNDIR")
    p.add_argument("model", metavar="MODEL",
                   help="model dir or hub name (for --backend openai: the served model's name)")
    p.add_argument("-o", "--out", help="run dir")
    t = p.add_argument_group("task (or several in a --spec YAML file: a list of mappings with these keys)")
    t.add_argument("--task", choices=TASKS)
    t.add_argument("--data", help="file or folder of the evaluation set")
    t.add_argument("--format", default="auto",
                   help="translation: flores|wmt|jsonl; mc: jsonl|xnli|xwinograd|xstorycloze|pawsx|xcopa; "
                        "chat: jsonl|oasst60 (default: detected)")
    t.add_argument("--name", help="task name in the run dir (default from the task and data)")
    t.add_argument("--limit", type=int, help="first N examples per direction / language")
    t.add_argument("--spec", help="YAML file with a list of tasks (keys as the flags, with _ for -)")
    tr = p.add_argument_group("translation and mgsm")
    tr.add_argument("--directions", help="e.g. en-zh,zh-en (default: en <-> every other language)")
    tr.add_argument("--split", help="FLORES split when a folder holds several (dev, devtest)")
    tr.add_argument("--shots", type=int, default=0,
                    help="translation: few-shot pairs (from the start of the set); mgsm: native chain-of-thought "
                         "exemplars 0..8 (from the data folder's exemplars.py)")
    tr.add_argument("--prompt", help="user turn template with {src_name} {tgt_name} {src_lang} {tgt_lang} {text}")
    tr.add_argument("--all-lines", dest="first_line", action="store_false", default=None,
                    help="score the whole reply, not just its first line")
    tr.add_argument("--bleu-tokenize", help="sacrebleu tokenizer for every direction (default: zh / char / 13a)")
    mc = p.add_argument_group("multiple choice and chat")
    mc.add_argument("--langs", help="only these languages, e.g. en,zh")
    mc.add_argument("--lang", help="language of files whose rows and file name do not say")
    mc.add_argument("--norm", default="sum", choices=["sum", "mean", "char", "byte"],
                    help="primary normalisation of option log-likelihoods (all four are reported)")
    mc.add_argument("--mc-format", default="native", choices=["native", "lm-eval"],
                    help="XWinograd/XCOPA: score the text as written (native), or build "
                         "lm-evaluation-harness's requests to compare with its published tables (lm-eval)")
    mc.add_argument("--tokenizer", help="fertility: measure this tokenizer (folder or .gguf file) instead of MODEL's")
    mc.add_argument("--data-b", help="judge: system B's replies (run dir or JSONL); --data holds system A's")
    mc.add_argument("--prompts", help="judge: prompts JSONL for reply files without them (arena export --prompts)")
    mc.add_argument("--guards", choices=["off", "on", "both"],
                    help="chat without / with bloomchat.infer's guards, or both arms "
                         "(default: no guards; a local model always generates through bloomchat.infer's engine)")
    g = p.add_argument_group("generation")
    g.add_argument("--greedy", action="store_true", help="chat: greedy instead of BLOOMChat's sampling")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens when sampling (default 50, as BLOOMChat's "
                                             "generate; 0 = off)")
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--seed", type=int, help="base sampling seed; each chat samples with its own seed from it "
                                            "and its content (default 0)")
    g.add_argument("--max-new-tokens", type=int)
    b = p.add_argument_group("backend and run")
    b.add_argument("--backend", default="hf", choices=["hf", "openai"])
    b.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    b.add_argument("--api-key", help="API key for --backend openai (default: $OPENAI_API_KEY)")
    b.add_argument("--concurrency", type=int, default=8, help="parallel requests with --backend openai")
    b.add_argument("--dtype", default="auto", help="float32, bf16, fp16; auto: bf16 on a GPU, float32 on CPU")
    b.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    engine_arg(b)
    b.add_argument("--batch-size", type=int, default=8,
                   help="examples per batch (mc: all their options in one pass; generation: the rows the "
                        "engine decodes together)")
    b.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (0: none)")
    b.add_argument("--overwrite", action="store_true", help="start the named tasks again instead of resuming")
    b.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="runs side by side, with paired tests against the first",
                       description="bloomchat eval compare RUN [RUN ...] [-o DIR]\n\nThe first run is the baseline; "
                                   "each later run gets paired differences on the items both scored (McNemar's exact "
                                   "test for right/wrong outcomes, paired bootstrap otherwise).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs (bloomchat eval run ... -o RUN)")
    p.add_argument("-o", "--out", help="output dir for compare.json, compare.md and charts")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (0: none)")
    p.set_defaults(func=_compare)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="a multiple-choice set to bloomchat's documented jsonl form",
                       description="bloomchat eval convert FILE --format xnli|xwinograd|xstorycloze|pawsx|xcopa "
                                   "-o OUT.jsonl")
    p.add_argument("input", metavar="FILE", help="the set (a file, or a folder of files)")
    p.add_argument("-o", "--out", required=True, help="output .jsonl")
    p.add_argument("--format", default="auto", help="xnli|xwinograd|xstorycloze|pawsx|xcopa|jsonl (default: detected)")
    p.add_argument("--lang", help="language of files whose rows and file name do not say")
    p.add_argument("--mc-format", default="native", choices=["native", "lm-eval"],
                   help="XWinograd/XCOPA: native text, or lm-evaluation-harness's requests")
    p.set_defaults(func=_convert)


def _task_opts(args) -> dict:
    keys = TASK_KEYS - {"greedy"}
    opts = {k: getattr(args, k) for k in keys if getattr(args, k, None) not in (None, "")}
    if args.greedy:
        opts["greedy"] = True
    if opts.get("format") == "auto":
        opts.pop("format")
    if not opts.get("shots"):
        opts.pop("shots", None)
    if opts.get("norm") == "sum":
        opts.pop("norm")
    if opts.get("mc_format") == "native":
        opts.pop("mc_format")
    return opts


def _gen_params(opts: dict, default, where: str):
    from dataclasses import replace

    from bloomchat.eval.backends import GenParams

    p = default
    if opts.get("greedy"):
        p = replace(p, temperature=0.0, top_p=1.0)
    for k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "max_new_tokens"):
        if opts.get(k) is not None:
            p = replace(p, **{k: opts[k]})
    assert isinstance(p, GenParams)
    return p.validate(where)  # infer's GenerationParams checks: one place for both stages


def _refuse(opts: dict, keys, what: str, where: str) -> None:
    """A task's option given to a task it does not apply to is an error, not silently ignored."""
    for k in keys:
        if k in opts:
            raise BloomchatError(f"{k} does not apply to {what}", where=where)


def _common_task_opts(opts: dict, where: str) -> tuple[str, dict]:
    """The task kind and the options every task takes (data, format, limit, name), checked."""
    unknown = set(opts) - TASK_KEYS
    if unknown:
        raise BloomchatError(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TASK_KEYS))}",
                             where=where)
    kind, data = opts.get("task"), opts.get("data")
    if kind not in TASKS:
        raise BloomchatError(f"task must be {', '.join(TASKS[:-1])} or {TASKS[-1]} (--task)", where=where)
    if not data:
        raise BloomchatError("no evaluation data (--data PATH)", where=where)
    if opts.get("limit") is not None and opts["limit"] < 1:
        raise BloomchatError("limit must be at least 1", where=where)
    return kind, {"data": str(data), "format": opts.get("format", "auto"), "limit": opts.get("limit"),
                  "name": opts.get("name") or ""}


def _translation_task(opts: dict, common: dict, where: str):
    from bloomchat.eval.backends import GenParams
    from bloomchat.eval.translation import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, TranslationTask, parse_directions

    _refuse(opts, ("langs", "norm", "guards", "mc_format"), "translation", where)
    params = _gen_params(opts, GenParams(max_new_tokens=DEFAULT_MAX_NEW_TOKENS), where)
    return TranslationTask(directions=parse_directions(opts.get("directions"), f"{where} directions"),
                           split=opts.get("split"), shots=int(opts.get("shots") or 0),
                           prompt=opts.get("prompt") or DEFAULT_PROMPT, params=params,
                           first_line=opts.get("first_line", True), bleu_tokenize=opts.get("bleu_tokenize"),
                           **common)


def _mc_task(opts: dict, common: dict, langs, lang, where: str):
    from bloomchat.eval.mc import MCTask

    _refuse(opts, ("directions", "guards", "shots"), "multiple choice", where)
    return MCTask(langs=langs, lang=lang, norm=opts.get("norm", "sum"),
                  mc_format=opts.get("mc_format", "native"), **common)


def _judge_task(opts: dict, common: dict, langs, where: str):
    from bloomchat.eval.judge import JUDGE_PARAMS, JudgeTask

    _refuse(opts, ("guards", "shots", "tokenizer", "mc_format", "norm", "directions"), "judge", where)
    common.pop("format")
    return JudgeTask(data_b=str(opts.get("data_b") or ""), prompts=opts.get("prompts"), langs=langs,
                     params=_gen_params(opts, JUDGE_PARAMS, where), **common)


def _fertility_task(opts: dict, common: dict, langs, lang, where: str):
    from bloomchat.eval.fertility import FertilityTask

    _refuse(opts, ("guards", "shots", "greedy", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"),
            "fertility", where)
    common.pop("format")
    return FertilityTask(langs=langs, lang=lang, tokenizer=opts.get("tokenizer"), **common)


def _mgsm_task(opts: dict, common: dict, langs, lang, where: str):
    from bloomchat.eval.mgsm import MGSM_PARAMS, MGSMTask

    _refuse(opts, ("guards",), "mgsm", where)
    common.pop("format")
    return MGSMTask(langs=langs, lang=lang, shots=int(opts.get("shots") or 0),
                    params=_gen_params(opts, MGSM_PARAMS, where), **common)


def _chat_tasks(opts: dict, common: dict, langs, lang, where: str) -> list:
    """One chat task, or two (guards off and on) for guards: both."""
    from bloomchat.eval.backends import BLOOMCHAT_SAMPLING
    from bloomchat.eval.chat import DEGENERATE_THRESHOLD, ChatTask

    params = _gen_params(opts, BLOOMCHAT_SAMPLING, where)
    guards = opts.get("guards")
    arms = ["off", "on"] if guards == "both" else [guards]
    tasks = []
    for arm in arms:
        c = dict(common)
        if c["name"] and arm:
            c["name"] = f"{c['name']}.guards-{arm}"
        tasks.append(ChatTask(langs=langs, lang=lang, params=params, guards=arm,
                              degenerate_threshold=float(opts.get("degenerate_threshold", DEGENERATE_THRESHOLD)), **c))
    return tasks


def make_tasks(opts: dict, where: str = "command line") -> list:
    """Task objects from one task's options (flags or one entry of a --spec file)."""
    from bloomchat.langs import normalize_lang, parse_lang_list

    kind, common = _common_task_opts(opts, where)
    if kind == "translation":
        return [_translation_task(opts, common, where)]
    langs = parse_lang_list(opts.get("langs"), f"{where} langs")
    lang = normalize_lang(opts["lang"], f"{where} lang") if opts.get("lang") else None
    if kind == "mc":
        return [_mc_task(opts, common, langs, lang, where)]
    for k, only in (("data_b", "judge"), ("prompts", "judge")):
        if k in opts and kind != only:
            raise BloomchatError(f"{k} applies to --task {only} only", where=where)
    if kind == "judge":
        return [_judge_task(opts, common, langs, where)]
    if "tokenizer" in opts and kind != "fertility":
        raise BloomchatError(f"tokenizer does not apply to {kind}", where=where)
    _refuse(opts, ("mc_format", "norm", "directions"), kind, where)
    if kind == "fertility":
        return [_fertility_task(opts, common, langs, lang, where)]
    if kind == "mgsm":
        return [_mgsm_task(opts, common, langs, lang, where)]
    return _chat_tasks(opts, common, langs, lang, where)


def _spec_tasks(path: str) -> list:
    import yaml

    p = Path(path)
    if not p.exists():
        raise BloomchatError("spec file not found", where=str(p))
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise BloomchatError(f"invalid YAML: {getattr(e, 'problem', e)}",
                             where=f"{p}:{mark.line + 1}" if mark else str(p)) from None
    if isinstance(spec, dict) and "tasks" in spec:
        spec = spec["tasks"]
    if not isinstance(spec, list) or not spec:
        raise BloomchatError("a spec is a non-empty list of tasks (or a mapping with 'tasks:')", where=str(p))
    tasks = []
    for i, entry in enumerate(spec):
        if not isinstance(entry, dict):
            raise BloomchatError("each task is a mapping (task: ..., data: ...)", where=f"{p} tasks[{i}]")
        entry = {k.replace("-", "_"): v for k, v in entry.items()}
        if entry.get("data") and not Path(str(entry["data"])).is_absolute():
            # relative data paths are relative to the spec file, so a spec travels with its repo
            cand = p.parent / str(entry["data"])
            if cand.exists():
                entry["data"] = str(cand)
        tasks.extend(make_tasks(entry, where=f"{p} tasks[{i}]"))
    return tasks


def run(args) -> int:
    from bloomchat.eval.backends import make_backend
    from bloomchat.eval.report import markdown
    from bloomchat.eval.runner import run_eval

    if not args.out:
        raise BloomchatError("no run dir: pass -o RUNDIR")
    if args.spec:
        if args.task:
            raise BloomchatError("give either --spec or --task, not both")
        tasks = _spec_tasks(args.spec)
    else:
        if not args.task:
            raise BloomchatError(f"no task: pass --task {'|'.join(TASKS)} --data PATH, or --spec FILE")
        tasks = make_tasks(_task_opts(args), where="command line")
    backend = make_backend(args.model, backend=args.backend, dtype=args.dtype, device=args.device,
                           base_url=args.base_url, api_key=args.api_key, concurrency=args.concurrency,
                           max_batch_size=max(1, args.batch_size), engine=args.engine)
    if args.bootstrap < 0:
        raise BloomchatError("--bootstrap must be >= 0")
    if args.backend == "openai" and any(t.kind == "mc" for t in tasks):
        backend.loglik([])  # raises: an endpoint cannot score options
    for t in tasks:  # load and check every set before any model time is spent
        t.examples()
    try:
        results = run_eval(tasks, backend, args.out, batch_size=args.batch_size, overwrite=args.overwrite,
                           bootstrap=args.bootstrap, progress=not args.no_progress,
                           command="bloomchat eval run " + " ".join(
                               shlex.quote(a) for a in sys.argv[2 + (sys.argv[2:3] == ["run"]):]))
    finally:
        backend.close()  # the local engine's thread
    md = markdown({**results, "tasks": {t.name: results["tasks"][t.name] for t in tasks}})
    print(md)
    print(f"wrote {Path(args.out) / 'results.json'}, results.md and charts/")
    return 0


def _compare(args) -> int:
    from bloomchat.eval.compare import compare_runs

    out = compare_runs(args.runs, args.out, bootstrap=args.bootstrap)
    print(out["markdown"])
    if args.out:
        print(f"wrote {Path(args.out) / 'compare.json'}, compare.md and compare charts")
    return 0


def _convert(args) -> int:
    from bloomchat.langs import normalize_lang
    from bloomchat.eval.mc import load_mc, write_mc_jsonl

    lang = normalize_lang(args.lang, "--lang") if args.lang else None
    items = load_mc(args.input, args.format, lang, args.mc_format)
    if not items:
        raise BloomchatError("no examples", where=args.input)
    out = write_mc_jsonl(items, args.out)
    langs = sorted({it["lang"] for it in items})
    print(f"wrote {len(items)} examples ({', '.join(langs)}) to {out}")
    return 0
