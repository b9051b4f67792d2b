"""Automatic multilingual evaluation: translation (BLEU/chrF++), multiple choice by
log-likelihood, chat behaviour (language consistency, repetition, length), run comparison.

    bloomchat eval MODEL --task translation|mc|chat --data PATH -o RUNDIR
    bloomchat eval compare RUN [RUN ...] -o DIR

    from bloomchat.eval import HFBackend, TranslationTask, run_eval
    run_eval([TranslationTask("../shared/data/flores101", limit=50)], HFBackend("out/stage2"), "runs/stage2")
"""

from bloomchat.eval.backends import BLOOMCHAT_SAMPLING, GenParams, HFBackend, OpenAIBackend, Reply, make_backend
from bloomchat.eval.chat import ChatTask, load_prompts, repeated_ngram_ratio
from bloomchat.eval.compare import compare_runs
from bloomchat.eval.mc import MCTask, load_mc
from bloomchat.eval.runner import run_eval, run_task
from bloomchat.eval.translation import TranslationTask

__all__ = [
    "BLOOMCHAT_SAMPLING", "ChatTask", "GenParams", "HFBackend", "MCTask", "OpenAIBackend", "Reply",
    "TranslationTask", "compare_runs", "load_mc", "load_prompts", "make_backend", "repeated_ngram_ratio",
    "run_eval", "run_task",
]
