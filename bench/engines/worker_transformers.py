"""Runs inside the transformers 4.57 venv: prompt ids from the saved chat template, N greedy ids.
Request (stdin JSON): {"model", "chats": {name: messages}, "n"}; prints one JSON line."""
import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

req = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(req["model"])
model = AutoModelForCausalLM.from_pretrained(req["model"], torch_dtype=torch.float32).eval()
out = {"version": transformers.__version__, "tokenizer_class": type(tok).__name__, "chats": {}}
for name, chat in req["chats"].items():
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=req["n"], min_new_tokens=req["n"], do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=None)
    out["chats"][name] = {"prompt_ids": ids, "greedy": gen[0, len(ids):].tolist()}
print(json.dumps(out))
