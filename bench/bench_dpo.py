"""Preference (DPO) training speed and memory: bloomchat's packed DPO step vs TRL 1.16's DPOTrainer.

    python bench/bench_dpo.py                                    # the demo's 48 written pairs, tiny BLOOM, CPU (~2 min)
    bloomchat prepare-pairs --jsonl ../shared/data/llamafactory_demo_zh_en/oaast_rm_zh.json \
        -o /tmp/bench-dpo/oaast-rm-zh-pairs.jsonl -q
    python bench/bench_dpo.py --pairs /tmp/bench-dpo/oaast-rm-zh-pairs.jsonl --steps 4 --pairs-per-step 8 --threads 1 \
        --json bench/results/cpu-2026-12-03/dpo_vs_trl.json        # the run in bench/results/cpu-2026-12-03/
    python bench/bench_dpo.py --model base/smollm2-135m --pairs PAIRS.jsonl   # a real model folder (its tokenizer)

Same model (default: a tiny BLOOM built here with a BPE tokenizer trained on the pairs' text; or
--model), same pairs (a prepared-pairs JSONL, `bloomchat prepare-pairs` output; only pairs whose
two sides fit one row of --seq tokens, the first (steps + 1) x pairs-per-step of them, so each
side sees every pair once), the same token ids (bloomchat's `pack.pairs.encode_pairs`, handed to
TRL as prompt_ids / chosen_ids / rejected_ids: TRL's own tokenisation is skipped), the same loss
(sigmoid DPO), beta, lr (constant), AdamW (torch's, no weight decay), grad clip 1.0, fp32. Each
side runs in its own subprocess, so its peak memory (max RSS; on CUDA also max allocated) is its
own. Timed: the optimizer steps after the first (warm-up); figures are loss tokens (reply tokens of
chosen + rejected, EOS included: the tokens that carry loss) per second over the timed steps.
Each side's first-step loss is printed: with policy = reference it must be log 2 = 0.6931.

Sides:
  bloomchat-single   `bloomchat train`, a kind: dpo stage, packing single: one pair a row (its chosen
                     and rejected as two conversations of that row, block-diagonal attention, ALiBi
                     restarted), pairs-per-step rows a step, rows padded to the step's longest
  bloomchat-greedy   the same with packing greedy: whole pairs packed into rows of --seq tokens;
                     rows a step = packed rows // (steps + 1): about pairs-per-step pairs (mean reported)
  trl-precompute     DPOTrainer(precompute_ref_log_probs=True): reference pass before training, as
                     bloomchat does; chosen and rejected are separate rows, each padded to the
                     batch's longest sequence (TRL's padding_free is disabled in 1.16)
  trl                DPOTrainer defaults: a second model in memory, a reference forward every step
Both bloomchat sides compute the reference once before training and run the LM head only on reply
tokens. BLOOM: bloomchat uses its SDPA kernel; TRL runs transformers' eager BLOOM attention (the
only one BLOOM has). On a CUDA machine the same script runs there (fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_PAIRS = REPO / "recipes" / "data" / "demo-dpo-pairs.jsonl"
SIDES = ("bloomchat-single", "bloomchat-greedy", "trl-precompute", "trl")


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup(work: Path, a) -> dict:
    """The model (built or given), the selected pairs for bloomchat and their ids for TRL."""
    from bloomchat.models import build_bloom, load_tokenizer, save_pretrained, train_bpe_tokenizer
    from bloomchat.pack.pairs import encode_pairs, pack_pairs, read_pairs

    pairs = list(read_pairs([a.pairs]))
    if a.model:
        model_dir, tok = Path(a.model).resolve(), load_tokenizer(a.model)
    else:
        texts = [t.text for p in pairs for t in p.prompt] + [x for p in pairs for x in (p.chosen, p.rejected)]
        tok = train_bpe_tokenizer(texts, vocab_size=a.vocab, min_frequency=1)
        model_dir = work / "model"
        save_pretrained(build_bloom(a.preset, vocab_size=len(tok), seed=0, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id), tok, model_dir)
        tok = load_tokenizer(model_dir)
    need = (a.steps + 1) * a.pairs_per_step
    enc = [(p, e) for p, e in zip(pairs, encode_pairs(pairs, tok)) if len(e) <= a.seq]
    if not enc:
        raise SystemExit(f"no pair of {a.pairs} fits {a.seq} tokens")
    chosen = [enc[i % len(enc)] for i in range(need)]  # repeated (new ids) when the file has fewer
    with open(work / "pairs.jsonl", "w", encoding="utf-8") as f, open(work / "trl.jsonl", "w") as g:
        for i, (p, e) in enumerate(chosen):
            rec = p.to_record()
            rec["id"] = f"{rec['id']}#{i // len(enc)}" if i >= len(enc) else rec["id"]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n = [int((m == 0).sum()) for m in e.mask]  # prompt tokens; the loss tokens are each side's suffix
            g.write(json.dumps({"prompt_ids": e.ids[0][:n[0]].tolist(), "chosen_ids": e.ids[0][n[0]:].tolist(),
                                "rejected_ids": e.ids[1][n[1]:].tolist()}) + "\n")
    probe = pack_pairs([work / "pairs.jsonl"], tok, work / "greedy-probe", max_seq_length=a.seq, packing="greedy")
    rows = probe["split"]["train"]["sequences"]
    meta = {"model": str(model_dir), "vocab": len(tok), "pairs_in_file": len(pairs), "pairs_fitting": len(enc),
            "pairs_used": need, "greedy_rows": rows, "greedy_rows_per_step": max(1, rows // (a.steps + 1)),
            "tokens_per_pair": sum(len(e) for _, e in chosen) / need,
            "loss_tokens_per_pair": sum(int(m.sum()) for _, e in chosen for m in e.mask) / need}
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def _summary(steps: list[dict]) -> dict:
    """Timed steps (warm-up left out): loss tokens per second over all of them, and per step."""
    timed = steps[1:]
    secs = sum(s["seconds"] for s in timed)
    return {"timed_steps": len(timed), "seconds": secs,
            "loss_tokens_per_s": sum(s["loss_tokens"] for s in timed) / secs,
            "tokens_per_s": sum(s["tokens"] for s in timed) / secs,
            "median_step_loss_tokens_per_s": statistics.median(s["loss_tokens"] / s["seconds"] for s in timed),
            "pairs_per_step": sum(s["pairs"] for s in timed) / len(timed),
            "loss_tokens_per_step": sum(s["loss_tokens"] for s in timed) / len(timed),
            "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"], "steps": steps}


def worker_bloomchat(work: Path, a, packing: str) -> dict:
    """`bloomchat train` on a one-stage kind: dpo recipe; per-step figures from its metrics.jsonl."""
    import yaml

    from bloomchat.train import run_recipe
    from bloomchat.train.report import read_metrics

    meta = json.loads((work / "meta.json").read_text())
    rows = a.pairs_per_step if packing == "single" else meta["greedy_rows_per_step"]
    n_rows = meta["pairs_used"] if packing == "single" else meta["greedy_rows"]
    recipe = {"name": "bench-dpo", "base_model": meta["model"], "output_dir": str(work / f"bloomchat-{packing}"),
              "precision": "fp32", "seed": 0,
              "stages": [{"name": "dpo", "kind": "dpo", "loss": "dpo", "beta": a.beta, "lr": a.lr,
                          "lr_schedule": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0,
                          "epochs": max(1, math.ceil((a.steps + 1) * rows / n_rows)), "max_steps": a.steps + 1,
                          "global_batch_size": rows, "micro_batch_size": rows,
                          "data": {"pairs": [str(work / "pairs.jsonl")], "max_seq_length": a.seq,
                                   "packing": packing, "dev_ratio": 0.0}}]}
    path = work / f"bloomchat-{packing}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = run_recipe(path, progress=False)
    recs = [r for r in read_metrics(Path(res["stages"][0]["metrics"])) if r["kind"] == "train"]
    prev = 0.0
    steps = []
    for r in recs:
        steps.append({"pairs": r["pairs"], "tokens": r["tokens"], "loss_tokens": r["loss_tokens"],
                      "seconds": r["elapsed_s"] - prev, "loss": r["loss"]})
        prev = r["elapsed_s"]
    return {**_summary(steps), "rows_per_step": rows}


def worker_trl(work: Path, a, precompute: bool) -> dict:
    """TRL's DPOTrainer on bloomchat's token ids; per-step figures from a callback and its training_step."""
    import warnings

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    meta = json.loads((work / "meta.json").read_text())
    DPOTrainer._prepare_dataset = lambda self, dataset, *args, **kw: dataset  # ids given: skip TRL's tokeniser
    rows = [json.loads(x) for x in (work / "trl.jsonl").read_text().splitlines()]
    steps, pending, clock = [], {}, {"t": None}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            steps.append({**pending, "seconds": now - clock["t"] if clock["t"] else None, "loss": None})
            clock["t"] = now

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and steps:
                steps[-1]["loss"] = logs["loss"]

    cuda = torch.cuda.is_available()
    args = DPOConfig(output_dir=str(work / f"trl-{precompute}"), beta=a.beta, loss_type=["sigmoid"],
                     learning_rate=a.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                     optim="adamw_torch", per_device_train_batch_size=a.pairs_per_step, gradient_accumulation_steps=1,
                     max_steps=a.steps + 1, max_length=None, precompute_ref_log_probs=precompute, report_to=[],
                     save_strategy="no", logging_strategy="steps", logging_steps=1, use_cpu=not cuda, bf16=False,
                     dataloader_num_workers=0, seed=0, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(meta["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(meta["model"], dtype=torch.float32), args=args,
                        train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()])
    inner = tr.training_step

    def counting(model, inputs, *rest, **kw):  # the batch this step trains on (the dataloader runs one ahead)
        pending.update(pairs=len(inputs["input_ids"]) // 2, tokens=int(inputs["attention_mask"].sum()),
                       loss_tokens=int(inputs["completion_mask"].sum()), padded_tokens=int(inputs["input_ids"].numel()))
        return inner(model, inputs, *rest, **kw)

    tr.training_step = counting
    tr.train()
    return {**_summary(steps), "padded_tokens_per_step": statistics.mean(s["padded_tokens"] for s in steps[1:])}


def run_worker(name: str, work: Path, a) -> dict:
    import torch

    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    base = _rss_mb()  # after importing torch
    if name.startswith("bloomchat-"):
        res = worker_bloomchat(work, a, name.split("-", 1)[1])
    else:
        res = worker_trl(work, a, precompute=name == "trl-precompute")
    res["rss_after_torch_import_mb"] = base
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        res["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def plot(table: dict, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    mem_key = "peak_cuda_allocated_mb" if all("peak_cuda_allocated_mb" in r for r in table.values()) else "peak_rss_mb"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["C0" if n.startswith("bloomchat") else "C1" for n in names]
    for ax, key, label in ((axes[0], "loss_tokens_per_s", "loss tokens / s (timed steps)"),
                           (axes[1], mem_key, "peak RSS (MB)" if mem_key == "peak_rss_mb" else "peak CUDA MB")):
        vals = [table[n][key] for n in names]
        ax.bar(names, vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _print_table(table: dict) -> None:
    print(f"{'side':17s} {'loss-tok/s':>10s} {'median':>8s} {'tok/s':>7s} {'pairs/step':>10s} {'loss-tok/step':>13s} "
          f"{'step s':>7s} {'loss@1':>7s} {'loss@end':>8s} {'peak RSS MB':>11s}")
    for name, r in table.items():
        print(f"{name:17s} {r['loss_tokens_per_s']:10.1f} {r['median_step_loss_tokens_per_s']:8.1f} "
              f"{r['tokens_per_s']:7.1f} {r['pairs_per_step']:10.1f} {r['loss_tokens_per_step']:13.0f} "
              f"{r['seconds'] / r['timed_steps']:7.2f} {r['first_loss']:7.4f} {r['last_loss']:8.4f} "
              f"{r['peak_rss_mb']:11.0f}" + (f"  CUDA {r['peak_cuda_allocated_mb']:.0f} MB"
                                              if "peak_cuda_allocated_mb" in r else ""))
    for ours in ("bloomchat-single", "bloomchat-greedy"):
        for base in ("trl-precompute", "trl"):
            if ours in table and base in table:
                o, b = table[ours], table[base]
                print(f"{ours} / {base}: {o['loss_tokens_per_s'] / b['loss_tokens_per_s']:.2f}x loss tokens/s, "
                      f"{o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x peak RSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(DEMO_PAIRS), help="prepared-pairs JSONL (bloomchat prepare-pairs)")
    ap.add_argument("--model", default=None, help="a model folder (default: a BLOOM of --preset built here)")
    ap.add_argument("--preset", default="tiny", help="bloomchat.models size preset of the built BLOOM")
    ap.add_argument("--vocab", type=int, default=16000, help="BPE vocabulary of the built model (at most)")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after 1 warm-up step)")
    ap.add_argument("--pairs-per-step", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512, help="max tokens of a pair (both sides); greedy row length")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads per side (0: torch's default, every core). 1 by default: on a CPU shared "
                         "with other work, 2 threads made step times swing 5x here (2026-12-03)")
    ap.add_argument("--json", default=None, help="write the results here (and a PNG chart beside it)")
    ap.add_argument("--worker-timeout", type=int, default=1200)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(run_worker(a.worker, Path(a.work), a)))
        return
    run(a)


def run(a) -> None:
    import datetime
    import os
    import platform

    table = {}
    t0, load0 = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        meta = setup(work, a)
        print(json.dumps(meta), flush=True)
        for name in a.sides.split(","):
            cmd = [sys.executable, __file__, "--worker", name, "--work", str(work)] + sys.argv[1:]
            try:
                env = {**os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {})}
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.worker_timeout, env=env)
            except subprocess.TimeoutExpired:
                print(f"{name}: timed out after {a.worker_timeout} s", flush=True)
                continue
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"{name}: failed\n{p.stderr[-2500:]}", flush=True)
                continue
            table[name] = json.loads(line[0][7:])
            r = table[name]
            print(f"{name}: {r['loss_tokens_per_s']:.1f} loss tokens/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}", flush=True)
    _print_table(table)
    import torch
    import transformers
    import trl

    info = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": len(os.sched_getaffinity(0)),
            "load_avg_at_start": load0, "load_avg_at_end": os.getloadavg(), "torch_threads": a.threads or "default",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "command": "python bench/bench_dpo.py " + " ".join(sys.argv[1:]), "wall_s": time.perf_counter() - t0,
            "args": {k: v for k, v in vars(a).items() if k not in ("worker", "work")}, **meta}
    if a.json:
        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": info, "results": table}, indent=1))
        where = "CUDA" if info["cuda"] else f"CPU ({info['cpus']} cores, {info['torch_threads']} torch threads a side)"
        model = Path(meta["model"]).name if a.model else f"{a.preset} BLOOM"
        plot(table, out.with_suffix(".png"), f"DPO, {meta['pairs_used']} pairs, {a.pairs_per_step} pairs/step, "
             f"{model}, fp32, {where}")
        print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
