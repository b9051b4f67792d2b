"""Chat and serving: generation engine, guards, terminal chat, OpenAI-compatible server, web page.

    from bloomchat.infer import load_chat_model, GenerationParams
    cm = load_chat_model("out/stage2")
    cm.reply([{"role": "user", "content": "Bonjour !"}], GenerationParams())

Names are imported on first use, so `bloomchat --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ChatModel": "bloomchat.infer.chat_model",
    "check_messages": "bloomchat.infer.chat_model",
    "load_chat_model": "bloomchat.infer.loading",
    "GenerationParams": "bloomchat.infer.params",
    "OpenAIChatClient": "bloomchat.infer.client",
    "GuardedChat": "bloomchat.infer.guards",
    "GuardConfig": "bloomchat.infer.guards",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bloomchat.infer' has no attribute {name!r}")


__all__ = list(_EXPORTS)
