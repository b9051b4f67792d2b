"""Helpers of the training tests: prepared data, shards written from the contract, recipes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

_PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("你好，请介绍一下北京。", "北京是中国的首都，有很多名胜古迹。"),
    ("Bonjour, comment ça va ?", "Très bien, merci. Et vous ?"),
    ("¿Dónde está la biblioteca?", "La biblioteca está al lado del parque."),
    ("مرحبا، كيف حالك؟", "أنا بخير، شكرا لك."),
    ("नमस्ते, आप कैसे हैं?", "मैं ठीक हूँ, धन्यवाद।"),
    ("Xin chào, bạn khỏe không?", "Tôi khỏe, cảm ơn bạn."),
    ("Olá, tudo bem?", "Tudo ótimo, obrigado!"),
    ("Write a function that adds two numbers.", "def add(a, b):\n    return a + b"),
]
_LANGS = ["en", "zh", "fr", "es", "ar", "hi", "vi", "pt", "en"]


def make_prepared(path: Path, n: int, *, seed: int = 0, source: str = "dolly") -> Path:
    """A prepared JSONL (DEVELOPERS.md contract) of n short conversations, 1-3 turns each."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            turns = []
            for _ in range(rng.randint(1, 3)):
                k = rng.randrange(len(_PAIRS))
                q, a = _PAIRS[k]
                turns += [{"role": "human", "text": q + " " + str(rng.randint(0, 99))},
                          {"role": "bot", "text": a}]
            text = "\n".join(("<human>: " if t["role"] == "human" else "<bot>: ") + t["text"] for t in turns)
            f.write(json.dumps({"prompt": "", "completion": text, "turns": turns, "source": source,
                                "lang": _LANGS[k], "id": f"{source}:{i}"}, ensure_ascii=False) + "\n")
    return path



def write_recipe(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def micro_recipe(model_dir: Path, out: Path, s1: Path, s2: Path, **stage_kw) -> dict:
    """Two stages on the micro model: 1 epoch of s1, then 2 epochs of s2 from stage 1."""
    common = {"global_batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "weight_decay": 0.1,
              "max_grad_norm": 1.0, "save_every_steps": 4, "keep_checkpoints": 2}
    common.update(stage_kw)
    return {
        "name": "micro",
        "base_model": str(model_dir),
        "output_dir": str(out),
        "seed": 7,
        "defaults": common,
        "stages": [
            {"name": "stage1", "data": {"shards": str(s1)}, "epochs": 1},
            {"name": "stage2", "data": {"shards": str(s2)}, "epochs": 2},
        ],
    }


def write_shards(out: Path, tokenizer, *, n_rows: int, seed: int, max_len: int = 96, dev_rows: int = 0) -> Path:
    """Packed shards written straight from the DEVELOPERS.md contract (independent of the packer):
    rows of 1-4 conversations, each a prompt (no loss) then a reply ending in EOS (loss)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bloomchat.models import tokenizer_fingerprint

    rng = np.random.default_rng(seed)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id

    def row():
        ids, loss, seg = [], [], []
        for k in range(1, int(rng.integers(1, 5)) + 1):
            p, r = int(rng.integers(3, 12)), int(rng.integers(2, 10))
            if len(ids) + p + r + 1 > max_len:
                break
            ids += rng.integers(4, vocab, p).tolist() + rng.integers(4, vocab, r).tolist() + [eos]
            loss += [0] * p + [1] * (r + 1)
            seg += [k] * (p + r + 1)
        return ids, loss, seg

    counts = {}
    for split, n in (("train", n_rows), ("dev", dev_rows)):
        if not n:
            continue
        rows = [row() for _ in range(n)]
        table = pa.table({
            "input_ids": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
            "loss_mask": pa.array([r[1] for r in rows], pa.list_(pa.int8())),
            "segment_ids": pa.array([r[2] for r in rows], pa.list_(pa.int16())),
        })
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / split / f"{split}-00000.parquet", row_group_size=16)
        counts[split] = {"sequences": n, "conversations": sum(max(r[2]) for r in rows),
                         "tokens": sum(len(r[0]) for r in rows), "loss_tokens": sum(sum(r[1]) for r in rows),
                         "by_source": {"synthetic": sum(max(r[2]) for r in rows)}, "by_lang": {"xx": 1}}
    stats = {"max_seq_length": max_len, "split": counts,
             "tokenizer": {"name": "tiny", "vocab_size": vocab, "fingerprint": tokenizer_fingerprint(tokenizer)}}
    (out / "stats.json").write_text(json.dumps(stats))
    return out


_PAIR_TOPICS = [
    ("en", "What is {i} plus {i}?", "It is {s}.", "I do not know, maybe {r}."),
    ("fr", "Combien font {i} et {i} ?", "Cela fait {s}.", "Aucune idée, {r} peut-être."),
    ("zh", "{i}加{i}等于多少？", "等于{s}。", "我不知道，也许是{r}。"),
    ("es", "¿Cuánto es {i} más {i}?", "Es {s}.", "No lo sé, quizá {r}."),
]


def make_pairs(path: Path, n: int, *, seed: int = 0, source: str = "tiny") -> Path:
    """A prepared-pairs JSONL (bloomchat.data.pairs) of n short pairs in 4 languages: every third
    has a two-turn prompt (an earlier bot reply, context only), every fifth shares the prompt of
    the pair before it (as OASST1's best reply against each worse one does)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        lang, q, good, bad = _PAIR_TOPICS[i % len(_PAIR_TOPICS)]
        k = rng.randint(1, 40)
        prompt = [{"role": "human", "text": q.format(i=k)}]
        if i % 3 == 2:
            prompt = [{"role": "human", "text": "Hi!"}, {"role": "bot", "text": "Hello."}] + prompt
        if i % 5 == 4 and rows:
            prompt, lang = rows[-1]["prompt"], rows[-1]["lang"]
            k = rows[-1]["meta"]["k"]
            good = _PAIR_TOPICS[[t[0] for t in _PAIR_TOPICS].index(lang)][2]
        rows.append({"prompt": prompt, "chosen": good.format(s=2 * k), "rejected": bad.format(r=rng.randint(0, 99)),
                     "lang": lang, "source": source, "id": f"{source}:{i}", "meta": {"k": k}})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
