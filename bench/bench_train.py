"""Training throughput: bloomchat's trainer vs HF Trainer (padded) vs TRL SFTTrainer (packing).

    python bench/bench_train.py                          # tiny and small-50m, CPU, ~10 min on 2 cores
    python bench/bench_train.py --models tiny --steps 6  # quicker
    python bench/bench_train.py --dolly ../shared/data/dolly15k/databricks-dolly-15k.from-docx.jsonl
    python bench/bench_train.py --kernels eager,sdpa,flex --models tiny --steps 4   # attention kernels, MFU, memory

Same data (single-turn conversations, so that all three train on exactly the bot reply tokens),
same model, same hardware, same tokens per optimizer step (4 rows x 512), in one run; each
system runs in its own subprocess so that peak memory (max RSS) is its own. Printed per model:
tokens/s (all real tokens, and loss tokens), peak RSS, and ratios against both baselines.
The first optimizer step is excluded (warm-up); rates are medians over steps, because the CPU
is often shared and a mean would mostly measure the neighbours.

What differs: bloomchat packs conversations and keeps them apart (block-diagonal mask, ALiBi
restarted per conversation) and runs the LM head only on loss positions. HF Trainer pads each
batch of whole conversations to its longest. TRL's packing ("bfd", padding-free) flattens a batch
into one row and relies on position ids to separate conversations -- BLOOM has no position ids
(ALiBi), so under TRL packed BLOOM conversations DO attend to each other (reported as
`apart: no`). On a GPU the same script measures bf16 with --bf16.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ = 512          # packed row length (BLOOMChat: 2048; shorter here so that a CPU step is seconds)
ROWS = 4           # rows per optimizer step: 4 x 512 = 2048 tokens a step for every system
PAD_BATCH = 12     # conversations per padded HF batch: ~12 x 170 tokens ~ 2048 real tokens a step
LR = 1e-4

_Q = ["Explain in two sentences why the sky is blue.", "请用三句话介绍一下长城的历史。",
      "Donne-moi trois conseils pour apprendre une langue.", "¿Cuál es la diferencia entre clima y tiempo?",
      "ما هي فوائد القراءة اليومية؟", "भारत की राजधानी के बारे में बताइए।", "Hãy giới thiệu về phở Việt Nam.",
      "Quais são os planetas do sistema solar?"]
_A = ["Sunlight is scattered by the air, and blue light is scattered the most. So we see blue everywhere.",
      "长城始建于春秋战国时期。秦始皇统一后将各段连接起来。明朝又大规模重修。",
      "Parlez tous les jours, lisez des textes simples et n'ayez pas peur des erreurs.",
      "El tiempo describe la atmósfera en un momento; el clima es el promedio durante muchos años.",
      "القراءة اليومية توسع المعرفة وتحسن التركيز وتقلل التوتر.",
      "नई दिल्ली भारत की राजधानी है। यहाँ संसद और राष्ट्रपति भवन हैं।",
      "Phở là món ăn truyền thống của Việt Nam, gồm bánh phở, nước dùng và thịt bò hoặc gà.",
      "Mercúrio, Vênus, Terra, Marte, Júpiter, Saturno, Urano e Netuno."]


def make_data(work: Path, n: int, dolly: str | None) -> list[dict]:
    """Single-turn conversations (prompt, reply): synthetic in 8 languages, or real Dolly-15k."""
    rng = random.Random(0)
    convs = []
    if dolly:
        with open(dolly, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                q = r["instruction"] + (("\n" + r["context"]) if r.get("context") else "")
                convs.append((q, r["response"]))
                if len(convs) >= n:
                    break
    else:
        for i in range(n):
            k = rng.randrange(len(_Q))
            reps = rng.randint(1, 4)
            convs.append((f"{_Q[k]} ({i})", " ".join([_A[k]] * reps)))
    return [{"prompt": "", "completion": f"<human>: {q}\n<bot>: {a}", "source": "bench", "lang": None,
             "turns": [{"role": "human", "text": q}, {"role": "bot", "text": a}], "id": str(i)}
            for i, (q, a) in enumerate(convs)]


def setup(work: Path, preset: str, n: int, dolly: str | None) -> None:
    from bloomchat.models import build_bloom, save_pretrained, train_bpe_tokenizer
    from bloomchat.pack import pack

    recs = make_data(work, n, dolly)
    with open(work / "data.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tok = train_bpe_tokenizer([r["completion"] for r in recs], vocab_size=16000)
    save_pretrained(build_bloom(preset, vocab_size=len(tok), seed=0), tok, work / "model")
    pack([work / "data.jsonl"], tok, work / "packed", max_seq_length=SEQ, packing="greedy", progress=False)


class _Clock:
    """Per optimizer step: tokens, loss tokens and wall time; the first step is warm-up."""

    def __init__(self):
        self.steps: list[tuple[int, int, float]] = []
        self.pending = (0, 0)
        self.t = None

    def batch(self, tokens: int, loss_tokens: int):
        self.pending = (tokens, loss_tokens)

    def step_end(self):
        now = time.perf_counter()
        if self.t is not None:
            self.steps.append((*self.pending, now - self.t))
        self.t = now

    def result(self):
        return summarize(self.steps)


def summarize(steps: list[tuple[int, int, float]]) -> dict:
    """Median of per-step rates: robust to other jobs sharing the CPU for a few seconds."""
    import statistics

    return {"tokens_per_s": statistics.median(t / dt for t, _, dt in steps),
            "loss_tokens_per_s": statistics.median(lt / dt for _, lt, dt in steps),
            "steps": len(steps)}


def worker_ours(work: Path, steps: int, bf16: bool, attention: str = "sdpa") -> dict:
    import yaml

    from bloomchat.train import run_recipe
    from bloomchat.train.report import read_metrics

    recipe = {"name": "bench", "base_model": str(work / "model"), "output_dir": str(work / f"ours-{attention}"),
              "precision": "bf16" if bf16 else "fp32", "attention": attention,
              "defaults": {"global_batch_size": ROWS, "micro_batch_size": ROWS, "lr": LR, "weight_decay": 0.1},
              "stages": [{"name": "s", "max_steps": steps + 1, "data": {"shards": str(work / "packed")}}]}
    p = work / f"ours-{attention}.yaml"
    p.write_text(yaml.safe_dump(recipe))
    res = run_recipe(p, progress=False)
    recs = [r for r in read_metrics(Path(res["stages"][0]["metrics"])) if r["kind"] == "train"]
    steps = [(b["tokens"], b["loss_tokens"], b["elapsed_s"] - a["elapsed_s"]) for a, b in zip(recs, recs[1:])]
    return {**summarize(steps), "apart": "yes"}


def _hf_args(out: Path, steps: int, bs: int, bf16: bool, cls=None, **kw):
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    return cls(output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=bs, learning_rate=LR,
               weight_decay=0.1, lr_scheduler_type="constant", report_to=[], save_strategy="no",
               logging_strategy="no", bf16=bf16, use_cpu=not bf16, dataloader_num_workers=0, seed=0, **kw)


def _callback(clock):
    from transformers import TrainerCallback

    class CB(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.step_end()

    return CB()


def worker_hf(work: Path, steps: int, bf16: bool) -> dict:
    """Plain transformers.Trainer: one conversation per row, padded per batch, loss on replies."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer

    from bloomchat.chat_format import segments
    from bloomchat.models import load_tokenizer

    tok = load_tokenizer(work / "model")
    rows = []
    for line in open(work / "data.jsonl", encoding="utf-8"):
        ids, labels = [], []
        for seg in segments(json.loads(line)["turns"]):
            t = tok(seg.text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if seg.loss else [])
            ids += t
            labels += t if seg.loss else [-100] * len(t)
        rows.append({"input_ids": ids[:SEQ], "labels": labels[:SEQ]})
    clock = _Clock()

    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        import torch

        ids = torch.full((len(batch), n), tok.pad_token_id)
        lab = torch.full((len(batch), n), -100)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):  # right padding for training
            k = len(b["input_ids"])
            ids[i, :k], lab[i, :k], att[i, :k] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        clock.batch(int(att.sum()), int((lab[:, 1:] != -100).sum()))
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    model = AutoModelForCausalLM.from_pretrained(work / "model")
    tr = Trainer(model=model, args=_hf_args(work / "hf", steps, PAD_BATCH, bf16, remove_unused_columns=False),
                 train_dataset=Dataset.from_list(rows), data_collator=collate, callbacks=[_callback(clock)])
    tr.train()
    return {**clock.result(), "apart": "yes (unpacked)"}


def worker_trl(work: Path, steps: int, bf16: bool) -> dict:
    """TRL SFTTrainer, prompt-completion data, packing (bfd, padding-free), completion-only loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from bloomchat.models import load_tokenizer

    tok = load_tokenizer(work / "model")
    data = []
    for line in open(work / "data.jsonl", encoding="utf-8"):
        t = json.loads(line)["turns"]
        data.append({"prompt": f"<human>: {t[0]['text']}\n<bot>:", "completion": f" {t[1]['text']}"})
    clock = _Clock()
    args = _hf_args(work / "trl", steps, ROWS, bf16, cls=SFTConfig, packing=True, max_length=SEQ,
                    completion_only_loss=True, dataset_num_proc=None)
    tr = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(work / "model"), args=args,
                    train_dataset=Dataset.from_list(data), processing_class=tok, callbacks=[_callback(clock)])
    inner = tr.data_collator

    def counting(batch):
        out = inner(batch)
        lab = out["labels"]
        clock.batch(int(out["input_ids"].numel()), int((lab[:, 1:] != -100).sum()))
        return out

    tr.data_collator = counting
    tr.train()
    return {**clock.result(), "apart": "no (BLOOM ignores position_ids)"}


def worker_ours_eager(work: Path, steps: int, bf16: bool) -> dict:
    """bloomchat with transformers' own eager BLOOM attention kernel (recipe `attention: eager`)."""
    return worker_ours(work, steps, bf16, attention="eager")


def _kernel_rows(work: Path, length: int, n_rows: int) -> list[dict]:
    """Rows of `length` tokens made of consecutive packed 512-token rows (segment ids renumbered,
    the last conversation cut at the row's end): conversations keep their real lengths."""
    import numpy as np

    from bloomchat.train.data import PackedSplit

    split = PackedSplit(work / "packed")
    out, src = [], 0
    for _ in range(n_rows):
        parts, n, off = [], 0, 0
        while n < length:
            r = split.rows([src % len(split)])[0]
            src += 1
            seg = r["segment_ids"].astype(np.int64)
            parts.append({**r, "segment_ids": seg + off})
            off = int(seg.max()) + off
            n += len(seg)
        out.append({k: np.concatenate([p[k] for p in parts])[:length] for k in ("input_ids", "loss_mask", "segment_ids")})
    return out


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker_kernel(work: Path, steps: int, bf16: bool, kernel: str, seq: int, rows: int, mem_lengths: list[int],
                  peak: float | None) -> dict:
    """One attention kernel in a bare packed training loop (packed_forward + weighted CE + AdamW),
    the loop the trainer runs, without going through a recipe. Speed: `rows` rows of `seq` tokens per
    step, median of `steps` timed steps after one warm-up. Memory: one more step on a single row of
    each length in `mem_lengths` (peak RSS above the RSS before that step on CPU; peak allocated
    above allocated before it on CUDA). flex on CPU goes through torch's reference (unfused) backward,
    the only one torch has there (see packing_attn.cpu_flex_reference_backward)."""
    import contextlib
    import statistics

    import torch
    from transformers import AutoModelForCausalLM

    from bloomchat.train.data import GPU_PAD_MULTIPLE, collate
    from bloomchat.train.mfu import ModelShape, batch_flops, mfu
    from bloomchat.train.packing_attn import cpu_flex_reference_backward, install_packed_attention, packed_forward

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    model = AutoModelForCausalLM.from_pretrained(work / "model").to(dev).train()
    install_packed_attention(model, kernel=kernel)
    shape = ModelShape.from_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and cuda) else contextlib.nullcontext()

    def ref():
        return cpu_flex_reference_backward() if (kernel == "flex" and not cuda) else contextlib.nullcontext()

    def step(batch):
        b = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with amp(), ref():
            logits = packed_forward(model, b["input_ids"], b["segment_ids"], b["flat_index"], bloom=True)
            losses = torch.nn.functional.cross_entropy(logits.float(), b["targets"], reduction="none")
            ((losses * b["weights"]).sum() / b["weights"].sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    def batch_of(rws, length):
        return collate(rws, pad_id=3, prompt_loss_weight=0.0, pad_to_multiple_of=GPU_PAD_MULTIPLE if cuda else 1)

    data = _kernel_rows(work, seq, rows * (steps + 1))
    times, flops = [], []
    for i in range(steps + 1):
        batch = batch_of(data[i * rows:(i + 1) * rows], seq)
        t = time.perf_counter()
        step(batch)
        if i:  # the first step is warm-up (and, on CUDA, flex's compilation)
            times.append((time.perf_counter() - t, batch["tokens"], batch["loss_tokens"]))
            flops.append(batch_flops(shape, batch["segment_ids"], head_tokens=len(batch["flat_index"])))
    dt = statistics.median(x[0] for x in times)
    tok_s = statistics.median(n / d for d, n, _ in times)
    res = {"tokens_per_s": tok_s, "loss_tokens_per_s": statistics.median(lt / d for d, _, lt in times),
           "step_s": dt, "flops_per_token": sum(flops) / sum(x[1] for x in times), "steps": steps}
    res["mfu"] = mfu(tok_s, res["flops_per_token"], peak)
    res["mem_mb"] = {}
    for length in mem_lengths:
        batch = batch_of(_kernel_rows(work, length, 1), length)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step(batch)
            res["mem_mb"][length] = (torch.cuda.max_memory_allocated() - before) / 2**20
        else:
            before = _rss_mb()
            step(batch)
            res["mem_mb"][length] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return res


WORKERS = {"bloomchat": worker_ours, "bloomchat-eager": worker_ours_eager, "hf-trainer-padded": worker_hf, "trl-sft-packing": worker_trl}


def run_worker(name: str, work: Path, steps: int, bf16: bool, a=None) -> dict:
    import torch

    torch.manual_seed(0)
    if name.startswith("kernel-"):
        res = worker_kernel(work, steps, bf16, name[7:], a.seq, a.rows, _ints(a.mem_lengths), a.peak)
    else:
        res = WORKERS[name](work, steps, bf16)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _peak(a) -> tuple[float | None, str]:
    """Peak TFLOP/s: --peak-tflops, else the GPU table, else a CPU estimate (cores x GHz x 32)."""
    import os

    import torch

    from bloomchat.train.mfu import CPU_FP32_FLOPS_PER_CYCLE, cpu_peak_tflops, peak_tflops

    if a.peak_tflops:
        return a.peak_tflops, "--peak-tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        p = peak_tflops(name, "bf16" if a.bf16 else "fp32")
        return p, f"{name}, dense {'bf16' if a.bf16 else 'fp32'} (table)" if p else f"{name}: not in the table"
    cores = len(os.sched_getaffinity(0))
    return (cpu_peak_tflops(cores, a.cpu_ghz),
            f"CPU estimate {cores} cores x {a.cpu_ghz} GHz x {CPU_FP32_FLOPS_PER_CYCLE} fp32 FLOP/cycle")


def run_kernels(a) -> None:
    """--kernels: the attention kernels side by side in the packed training loop (speed, MFU, memory)."""
    import datetime
    import platform

    peak, why = _peak(a)
    a.peak = peak
    print(f"peak {peak if peak else '?'} TFLOP/s ({why}); {a.rows} rows x {a.seq} tokens a step; "
          f"memory: one step on one row of {a.mem_lengths} tokens", flush=True)
    print(f"{'model':10s} {'kernel':6s} {'tok/s':>8s} {'loss-tok/s':>10s} {'step s':>7s} {'GFLOP/tok':>9s} {'MFU':>7s}  "
          + "  ".join(f"mem@{n}" for n in _ints(a.mem_lengths)), flush=True)
    table = {}
    for preset in a.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            setup(work, preset, a.conversations, a.dolly)
            for kernel in a.kernels.split(","):
                cmd = [sys.executable, __file__, "--worker", f"kernel-{kernel}", "--work", str(work),
                       "--steps", str(a.steps), "--seq", str(a.seq), "--rows", str(a.rows),
                       "--mem-lengths", a.mem_lengths, "--peak-tflops", str(peak or 0)]
                try:
                    p = subprocess.run(cmd + (["--bf16"] if a.bf16 else []), capture_output=True, text=True,
                                       timeout=a.worker_timeout)
                except subprocess.TimeoutExpired:
                    print(f"{preset:10s} {kernel:6s} timed out after {a.worker_timeout} s", flush=True)
                    continue
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    print(f"{preset:10s} {kernel:6s} failed\n{p.stderr[-1500:]}", flush=True)
                    continue
                r = table[f"{preset}/{kernel}"] = json.loads(line[0][7:])
                m = f"{100 * r['mfu']:6.2f}%" if r.get("mfu") is not None else "      ?"
                mem = "  ".join(f"{v:7.0f} MB" for v in r["mem_mb"].values())
                print(f"{preset:10s} {kernel:6s} {r['tokens_per_s']:8.0f} {r['loss_tokens_per_s']:10.0f} "
                      f"{r['step_s']:7.2f} {r['flops_per_token'] / 1e9:9.3f} {m}  {mem}", flush=True)
    meta = {"date": datetime.date.today().isoformat(), "host": platform.node(), "peak_tflops": peak, "peak_source": why,
            "seq": a.seq, "rows": a.rows, "steps": a.steps, "bf16": a.bf16, "mem_lengths": _ints(a.mem_lengths)}
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "results": table}, indent=1))
    print(json.dumps({"meta": meta, "results": table}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,small-50m")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps (after 1 warm-up step)")
    ap.add_argument("--conversations", type=int, default=600)
    ap.add_argument("--dolly", default=None, help="use real Dolly-15k jsonl instead of synthetic data")
    ap.add_argument("--bf16", action="store_true", help="bf16 (GPU)")
    ap.add_argument("--systems", default=",".join(WORKERS))
    ap.add_argument("--kernels", default=None,
                    help="compare attention kernels instead of trainers, e.g. eager,sdpa,flex (packed loop, MFU, memory)")
    ap.add_argument("--seq", type=int, default=SEQ, help="--kernels: tokens per row")
    ap.add_argument("--rows", type=int, default=ROWS, help="--kernels: rows per step")
    ap.add_argument("--mem-lengths", default="2048,4096", help="--kernels: row lengths of the one-step memory probe")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for MFU (default: dense bf16 table on GPU, cores x --cpu-ghz x 32 on CPU)")
    ap.add_argument("--cpu-ghz", type=float, default=3.0, help="clock assumed by the CPU peak estimate")
    ap.add_argument("--worker-timeout", type=int, default=1800, help="--kernels: seconds per kernel")
    ap.add_argument("--json", default=None, help="--kernels: also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.peak = a.peak_tflops or None
        print("RESULT " + json.dumps(run_worker(a.worker, Path(a.work), a.steps, a.bf16, a)))
        return
    if a.kernels:
        run_kernels(a)
        return
    table = {}
    for preset in a.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            setup(work, preset, a.conversations, a.dolly)
            for name in a.systems.split(","):
                cmd = [sys.executable, __file__, "--worker", name, "--work", str(work), "--steps", str(a.steps)]
                p = subprocess.run(cmd + (["--bf16"] if a.bf16 else []), capture_output=True, text=True)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    print(f"{preset} {name}: failed\n{p.stderr[-1500:]}")
                    continue
                table[(preset, name)] = json.loads(line[0][7:])
                r = table[(preset, name)]
                print(f"{preset:10s} {name:18s} {r['tokens_per_s']:8.0f} tok/s {r['loss_tokens_per_s']:8.0f} "
                      f"loss-tok/s  peak RSS {r['peak_rss_mb']:6.0f} MB  apart: {r['apart']}", flush=True)
            ours = table.get((preset, "bloomchat"))
            for base in ("hf-trainer-padded", "trl-sft-packing"):
                b = table.get((preset, base))
                if ours and b:
                    print(f"{preset:10s} bloomchat / {base}: {ours['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
                          f"{ours['loss_tokens_per_s'] / b['loss_tokens_per_s']:.2f}x loss tokens/s, "
                          f"{ours['peak_rss_mb'] / b['peak_rss_mb']:.2f}x peak RSS")
    print(json.dumps({f"{k[0]}/{k[1]}": v for k, v in table.items()}, indent=1))


if __name__ == "__main__":
    main()
