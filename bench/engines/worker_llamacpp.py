"""Runs inside the llama-cpp-python venv on a GGUF written by `bloomchat export gguf`: the chat
rendered from the GGUF's own template (as llama-cpp-python's server does), its ids, greedy N tokens
from those ids and from the reference ids. Request: {"gguf", "chats", "n", "ref_ids"}."""
import json
import sys

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

req = json.loads(sys.stdin.read())
llm = Llama(model_path=req["gguf"], n_ctx=2048, n_threads=2, seed=0, verbose=False)
meta = llm.metadata
eos_id = int(meta["tokenizer.ggml.eos_token_id"])
fmt = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"], eos_token=llm._model.token_get_text(eos_id),
                          bos_token="<s>")


def greedy(ids, n):
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            return out


res = {"version": llama_cpp.__version__, "pre": meta.get("tokenizer.ggml.pre"), "context": meta.get("bloom.context_length") or meta.get("llama.context_length"), "chats": {}}
for name, chat in req["chats"].items():
    prompt = fmt(messages=chat).prompt
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    res["chats"][name] = {"prompt_text": prompt, "prompt_ids": list(ids), "greedy": greedy(ids, req["n"]),
                          "greedy_from_ref_ids": greedy(req["ref_ids"][name], req["n"])}
print(json.dumps(res))
