"""`bloomchat arena ...`: human pairwise evaluation by native speakers.

    bloomchat arena init --db arena.sqlite                     # creates/migrates; prints the admin token
    bloomchat arena import-prompts ../shared/data/eval_prompts_vicuna80_12lang
    bloomchat arena export --prompts prompts.jsonl             # for systems that reply elsewhere
    bloomchat arena import-replies gpt4.jsonl other.jsonl      # {"prompt_id","system","reply"} lines
    bloomchat arena generate --system bloomchat --model out/stage2 --langs zh
    bloomchat arena add-rater Li --langs zh,en                 # prints Li's personal token
    bloomchat arena raters                                     # who rates what; `revoke NAME` disables a token
    bloomchat arena serve --port 8000                          # rating page + admin results page
    bloomchat arena results --ties seed                        # table in the terminal
    bloomchat arena export --out arena-results/                # JSON, CSV, votes, chart PNG, HTML
    bloomchat arena export-replies --systems base,stage2 --out pairs/   # for an LLM judge (eval --task judge)
    bloomchat arena export-pairs --out arena-pairs.jsonl   # decided votes -> pairs for a kind: dpo stage
    bloomchat arena judge-agreement --judge runs/judge --out agreement/ # the judge vs the raters, per language

Every command takes --db (file path or SQLAlchemy URL such as
postgresql+psycopg2://arena@db.example:5432/arena); default $BLOOMCHAT_ARENA_DB or ./arena.sqlite.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from bloomchat.errors import BloomchatError


def _langs(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def _db(args):
    from bloomchat.arena.db import Database

    return Database(args.db)


def cmd_init(args) -> int:
    from sqlalchemy import select

    from bloomchat.arena.db import Rater, current_revision
    from bloomchat.arena.store import add_rater

    db = _db(args)
    print(f"arena database ready: {db.engine.url.render_as_string(hide_password=True)} (schema {current_revision(db.engine)})")
    with db.Session() as s:
        has_admin = s.scalar(select(Rater.id).where(Rater.is_admin.is_(True)).limit(1)) is not None
    if not has_admin:
        token = add_rater(db, args.admin_name, [], admin=True)
        print(f"admin {args.admin_name!r} token (shown once, keep it secret): {token}")
    else:
        print("an admin exists already; add another with `bloomchat arena add-rater NAME --admin`")
    return 0


def cmd_import_prompts(args) -> int:
    from bloomchat.arena.prompt_sets import UnsupportedLayout, default_set_name, load_prompt_file, prompt_files
    from bloomchat.arena.store import import_prompts

    if args.ranked_top is not None and args.ranked_top < 2:
        raise BloomchatError("must be at least 2 (a comparison needs two replies)", where="--ranked-top")
    db = _db(args)
    for path in args.paths:
        files = prompt_files(path)
        seen: dict[str, list] = {}  # prompt id -> turns, over the files of this folder
        for f in files:
            def load(set_name):
                return load_prompt_file(f, lang=args.lang, set_name=set_name, ranked_prefix=args.ranked_replies,
                                        ranked_top=args.ranked_top, lang_blocks=_langs(args.lang_blocks) or None)
            try:
                items = load(args.set)
                if args.set is None and any(seen.get(i.key, i.turns) != i.turns for i in items):
                    # Two files of one folder number different prompts alike (LLM Zoo's en100.jsonl and
                    # questions-en.jsonl): the later file's prompts get the file name in their set.
                    items = load(f"{default_set_name(f)}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', f.stem)}")
                    print(f"{f.name}: its ids clash with another file of {f.parent}; set {items[0].set_name!r}",
                          file=sys.stderr)
            except UnsupportedLayout as e:
                if len(files) == 1:
                    raise
                print(f"skipped {f.name}: {e}", file=sys.stderr)
                continue
            for i in items:
                seen.setdefault(i.key, i.turns)
            ps, rs = import_prompts(db, items, str(f))
            langs = sorted({i.lang for i in items})
            msg = f"{f}: prompts {ps} ({', '.join(langs)})"
            if args.ranked_replies:
                msg += f"; replies {rs}"
            print(msg)
    return 0


def cmd_import_replies(args) -> int:
    from bloomchat.arena.store import import_replies

    db = _db(args)
    for f in args.files:
        print(f"{f}: replies {import_replies(db, f, system=args.system, replace=args.replace)}")
    return 0


def cmd_generate(args) -> int:
    from bloomchat.arena.generate import generate_replies
    from bloomchat.infer import GenerationParams, load_chat_model

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise BloomchatError(f"environment variable {args.api_key_env} is not set", where="--api-key-env")
    params = GenerationParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              repetition_penalty=args.repetition_penalty,
                              max_new_tokens=args.max_new_tokens, seed=args.seed).validate("generation flags")
    db = _db(args)
    cm = load_chat_model(args.model, quantize=args.quantize, device=args.device, backend=args.backend,
                         base_url=args.base_url, api_key=api_key, name=args.system, engine=args.engine)
    try:
        n, empty = generate_replies(db, args.system, cm, params, langs=_langs(args.langs) or None,
                                    batch_size=args.batch_size, origin=f"{args.backend}:{args.model}")
    finally:
        close = getattr(cm, "close", None)
        if close:
            close()
    print(f"{n} replies of {args.system!r} stored" + (f" ({empty} empty: the model stopped at once; raters see them "
                                                       "marked as empty)" if empty else ""))
    return 0


def cmd_add_rater(args) -> int:
    from bloomchat.arena.store import add_rater

    token = add_rater(_db(args), args.name, _langs(args.langs), admin=args.admin)
    role = "admin" if args.admin else f"rater for {args.langs}"
    print(f"{role} {args.name!r} token (shown once, hand it over privately): {token}")
    return 0


def cmd_raters(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from bloomchat.arena.store import list_raters

    t = Table(title="raters")
    for col in ("name", "languages", "role", "state", "votes"):
        t.add_column(col)
    for r in list_raters(_db(args)):
        t.add_row(r["name"], ",".join(r["langs"]), "admin" if r["admin"] else "rater",
                  "active" if r["active"] else "revoked", str(r["votes"]))
    Console().print(t)
    return 0


def cmd_revoke(args) -> int:
    from bloomchat.arena.store import revoke_rater

    revoke_rater(_db(args), args.name)
    print(f"token of {args.name!r} revoked; their votes are kept")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from bloomchat.arena.app import create_app

    if not 0.0 <= args.overlap <= 1.0:
        raise BloomchatError("must be between 0 and 1", where="--overlap")
    db = _db(args)
    print(f"bloomchat arena on http://{args.host}:{args.port}/  (database {db.engine.url.render_as_string(hide_password=True)})")
    uvicorn.run(create_app(db, overlap=args.overlap), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _check_rule(rule: str) -> str:
    from bloomchat.arena.stats import TIE_RULES

    if rule not in TIE_RULES:
        raise BloomchatError(f"choose one of {', '.join(TIE_RULES)}", where="--ties")
    return rule


def cmd_results(args) -> int:
    import json

    from bloomchat.arena import report

    db = _db(args)
    rule = _check_rule(args.ties)
    if args.out:
        doc = report.write_all(db, args.out, rule, _langs(args.lang) or None)
    else:
        doc = report.results(db, rule, _langs(args.lang) or None)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        report.print_table(doc)
    if args.out:
        print(f"wrote results.json, results.csv, votes.csv, votes.jsonl, chart.png, report.html to {args.out}")
    return 0


def cmd_export(args) -> int:
    from bloomchat.arena import report
    from bloomchat.arena.store import export_prompts

    if not args.out and not args.prompts:
        raise BloomchatError("say what to export: --out DIR (results) and/or --prompts FILE", where="export")
    db = _db(args)
    if args.prompts:
        n = export_prompts(db, args.prompts, _langs(args.lang) or None)
        print(f"{n} prompts written to {args.prompts}")
    if args.out:
        doc = report.write_all(db, args.out, _check_rule(args.ties), _langs(args.lang) or None)
        print(f"{doc['votes']} votes: results.json, results.csv, votes.csv, votes.jsonl, chart.png, report.html in {args.out}")
    return 0


def cmd_export_replies(args) -> int:
    from bloomchat.arena.judge_agreement import export_replies

    counts = export_replies(_db(args), _langs(args.systems), args.out, _langs(args.lang) or None)
    n = next(iter(counts.values()))
    print(f"{n} prompts answered by {', '.join(counts)}: " + ", ".join(str(Path(args.out) / f"{x}.jsonl") for x in counts))
    return 0


def cmd_export_pairs(args) -> int:
    from bloomchat.arena.pairs import export_pairs

    db = _db(args)
    try:
        res = export_pairs(db, args.out, langs=_langs(args.lang) or None)
    finally:
        db.close()
    langs = ", ".join(f"{k} {v}" for k, v in res["by_lang"].items()) or "none"
    skipped = ", ".join(f"{k} {v}" for k, v in res["skipped"].items()) or "none"
    print(f"{res['pairs']} pairs ({langs}) -> {res['out']}; votes left out: {skipped}")
    return 0


def cmd_judge_agreement(args) -> int:
    from bloomchat.arena.judge_agreement import judge_agreement

    doc = judge_agreement(_db(args), args.judge, args.out, task=args.task, langs=_langs(args.lang) or None,
                          bootstrap=args.bootstrap)

    def f(x, ci):
        return "-" if x is None else f"{x:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    print(f"{'lang':6} {'votes':>6} {'prompts':>7}  {'agreement':22} kappa")
    for g, v in doc["by_lang"].items():
        print(f"{g:6} {v['n']:>6} {v['prompts']:>7}  {f(v['agreement'], v['agreement_ci95']):22} "
              f"{f(v['kappa'], v['kappa_ci95'])}")
    print("judge cannot stand in for native speakers in: " + (", ".join(doc["cannot_stand_in"]) or "none")
          + f" ({doc['rule']})")
    if doc["too_few_votes"]:
        print("too few paired votes to tell: " + ", ".join(doc["too_few_votes"]))
    if args.out:
        print(f"wrote judge_agreement.json and judge_agreement.png to {args.out}")
    return 0


def _add_setup_commands(sub, common) -> None:
    """init, import-prompts, import-replies: fill the database."""
    s = sub.add_parser("init", parents=[common], help="create or migrate the database; issue the first admin token")
    s.add_argument("--admin-name", default="admin")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("import-prompts", parents=[common], help="import prompt files or folders")
    s.add_argument("paths", nargs="+", help="files (.jsonl/.json) or folders of them")
    s.add_argument("--lang", help="language of every prompt (else from the record, the file name, or detected)")
    s.add_argument("--set", help="prompt set name used in prompt ids <set>/<lang>/<id> (default: from the folder)")
    s.add_argument("--lang-blocks", help="for files of bare strings: languages of the equal blocks, e.g. en,es,zh")
    s.add_argument("--ranked-replies", metavar="PREFIX",
                   help="alpaca files with a ranked 'output' list: import the replies as systems PREFIX-rank1, -rank2, ...")
    s.add_argument("--ranked-top", type=int, metavar="K", help="with --ranked-replies: only the K best-ranked replies")
    s.set_defaults(func=cmd_import_prompts)

    s = sub.add_parser("import-replies", parents=[common], help='import {"prompt_id","system","reply"} JSONL files')
    s.add_argument("files", nargs="+")
    s.add_argument("--system", help="system name for every line (overrides the 'system' field)")
    s.add_argument("--replace", action="store_true", help="overwrite a system's existing reply to a prompt")
    s.set_defaults(func=cmd_import_replies)


def _add_generate_command(sub, common) -> None:
    """generate: a model's replies to the stored prompts."""
    from bloomchat.infer.cli import engine_arg

    s = sub.add_parser("generate", parents=[common], help="ask a local model or an OpenAI-compatible endpoint for replies")
    s.add_argument("--system", required=True, help="name the replies are stored under")
    s.add_argument("--model", required=True, help="model folder / hub name, or the endpoint's model name")
    s.add_argument("--backend", default="local", choices=["local", "openai"])
    s.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--api-key-env", help="environment variable holding the endpoint's API key")
    s.add_argument("--quantize", choices=["int8"], default=None)
    s.add_argument("--device", default=None)
    engine_arg(s)
    s.add_argument("--langs", help="only prompts in these languages, e.g. zh,fr")
    s.add_argument("--batch-size", type=int, default=16, help="prompts per batch (saved after each)")
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens (default 50, as BLOOMChat's "
                                                         "generate; 0 = off)")
    s.add_argument("--repetition-penalty", type=float, default=1.2)
    s.add_argument("--max-new-tokens", type=int, default=512)
    s.add_argument("--seed", type=int, default=None)
    s.set_defaults(func=cmd_generate)


def _add_rater_commands(sub, common) -> None:
    """add-rater, raters, revoke, serve: the people and the pages they vote on."""
    s = sub.add_parser("add-rater", parents=[common], help="issue a personal token to a rater (or an admin)")
    s.add_argument("name")
    s.add_argument("--langs", help="languages the rater is native in, e.g. zh,fr")
    s.add_argument("--admin", action="store_true", help="an admin: sees results and exports")
    s.set_defaults(func=cmd_add_rater)

    s = sub.add_parser("raters", parents=[common], help="list raters, their languages and vote counts")
    s.set_defaults(func=cmd_raters)

    s = sub.add_parser("revoke", parents=[common], help="disable a rater's token (votes are kept)")
    s.add_argument("name")
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("serve", parents=[common], help="run the rating and results pages")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--overlap", type=float, default=0.1,
                   help="share of pairs given to a second rater to measure agreement (0..1, default 0.1)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)


def _add_judge_commands(sub, common) -> None:
    """export-replies, judge-agreement: an LLM judge measured against the raters."""
    s = sub.add_parser("export-replies", parents=[common],
                       help="two or more systems' replies on the prompts all answered, one JSONL per system")
    s.add_argument("--systems", required=True, help="comma-separated system names, e.g. base,stage2")
    s.add_argument("--lang", help="only these languages, e.g. zh,fr")
    s.add_argument("--out", required=True, help="folder for <system>.jsonl")
    s.set_defaults(func=cmd_export_replies)

    s = sub.add_parser("export-pairs", parents=[common],
                       help="decided votes (not ties) as preference pairs for a kind: dpo stage, per language")
    s.add_argument("--lang", help="only these languages, e.g. zh,fr")
    s.add_argument("--out", required=True, help="prepared-pairs JSONL to write (rater and vote ids kept)")
    s.set_defaults(func=cmd_export_pairs)

    s = sub.add_parser("judge-agreement", parents=[common],
                       help="an LLM judge's verdicts (eval --task judge) beside the raters' votes, per language")
    s.add_argument("--judge", required=True, help="eval run dir holding a judge task")
    s.add_argument("--task", help="the judge task's name when the run dir holds several")
    s.add_argument("--lang", help="only these languages, e.g. zh,fr")
    s.add_argument("--out", help="folder for judge_agreement.json and judge_agreement.png")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over prompts for the intervals")
    s.set_defaults(func=cmd_judge_agreement)


def _add_results_commands(sub, common) -> None:
    """results, export: the vote tallies, on screen or as files."""
    for name, helptext, fn in (("results", "print the results table (and write files with --out)", cmd_results),
                               ("export", "write results (JSON, CSV, PNG, HTML, raw votes) and/or the prompts", cmd_export)):
        s = sub.add_parser(name, parents=[common], help=helptext)
        s.add_argument("--ties", default="seed", help="how ties count: seed (BLOOMChat's way), half, exclude")
        s.add_argument("--lang", help="only these languages, e.g. zh,fr")
        s.add_argument("--out", help="folder for results.json, results.csv, votes.*, chart.png, report.html")
        if name == "results":
            s.add_argument("--json", action="store_true", help="print the results JSON instead of tables")
        else:
            s.add_argument("--prompts", help="also write the prompts as JSONL (prompt_id, lang, turns, messages)")
        s.set_defaults(func=fn)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("arena", help="human evaluation: blind pairwise votes by native speakers",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="arena_cmd", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="database file or URL (default $BLOOMCHAT_ARENA_DB or ./arena.sqlite)")
    _add_setup_commands(sub, common)
    _add_generate_command(sub, common)
    _add_rater_commands(sub, common)
    _add_judge_commands(sub, common)
    _add_results_commands(sub, common)
