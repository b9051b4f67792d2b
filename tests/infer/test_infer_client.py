"""`--backend openai`: the OpenAI-compatible client has ChatModel's API (checked against our server)."""

from __future__ import annotations

import io
import socket

import pytest

from bloomchat.errors import BloomchatError
from bloomchat.infer import GenerationParams, load_chat_model
from bloomchat.infer.guards import GuardConfig, GuardedChat
from bloomchat.infer.server import BackgroundServer, create_app
from bloomchat.infer.terminal import TerminalChat
from infer_helpers import scripted_chat_model

REPLY = "Bonjour ! Je vais très bien, merci."


@pytest.fixture(scope="module")
def remote(tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " " + REPLY, name="remote-model")
    with BackgroundServer(create_app(cm, api_keys={"sk-r"}, guards=None)) as srv:
        yield srv
    cm.close()


def test_infer_openai_backend_reply_stream_batch(remote):
    c = load_chat_model("remote-model", backend="openai", base_url=remote.url + "/v1", api_key="sk-r")
    msgs = [{"role": "user", "content": "Salut, ça va ?"}]
    p = GenerationParams(temperature=0, max_new_tokens=100)
    assert c.reply(msgs, p) == REPLY
    pieces = list(c.stream(msgs, p))
    assert len(pieces) > 1 and "".join(pieces) == REPLY
    assert c.reply_batch([msgs] * 4, p) == [REPLY] * 4
    last = list(c.stream_events(msgs, p))[-1]
    assert last.done and last.finish_reason == "stop" and last.completion_tokens > 0
    assert c.reply(msgs, p.replace(max_new_tokens=3)) != REPLY  # parameters reach the engine
    c.close()


def test_infer_openai_backend_errors_are_bloomchat_errors(remote):
    with pytest.raises(BloomchatError, match="needs --base-url"):
        load_chat_model("m", backend="openai")
    wrong = load_chat_model("nope", backend="openai", base_url=remote.url + "/v1", api_key="sk-r")
    with pytest.raises(BloomchatError, match="404"):
        wrong.reply([{"role": "user", "content": "hi"}])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # a port nobody listens on once the socket closes
    gone = load_chat_model("m", backend="openai", base_url=f"http://127.0.0.1:{dead}/v1", api_key="x")
    with pytest.raises(BloomchatError, match="cannot reach"):
        gone.reply([{"role": "user", "content": "hi"}])


def test_infer_terminal_chat_over_openai_backend(remote):
    client = load_chat_model("remote-model", backend="openai", base_url=remote.url + "/v1", api_key="sk-r")
    lines = iter(["Salut", "/stats", "/quit"])
    out = io.StringIO()
    chat = GuardedChat(client, GuardConfig(language=False, repetition=True, moderator=None))
    rc = TerminalChat(chat, GenerationParams(temperature=0), read=lambda prompt: next(lines), out=out,
                      model_label="remote-model").run()
    assert rc == 0 and f"bot> {REPLY}\n" in out.getvalue()
    assert '"requests": 1' in out.getvalue()


def test_sampling_extras_reach_open_engines_and_not_openai():
    from bloomchat.errors import BloomchatError
    from bloomchat.infer.client import OpenAIChatClient
    from bloomchat.infer.params import GenerationParams

    msgs = [{"role": "user", "content": "hi"}]
    # a greedy-looking 1.0 is still sent: bloomchat serve would otherwise apply its own 1.2 and top_k 50
    kw = OpenAIChatClient("http://127.0.0.1:9/v1", model="m")._kwargs(msgs, GenerationParams(repetition_penalty=1.0, top_k=0))
    assert kw["extra_body"] == {"repetition_penalty": 1.0, "top_k": 0}
    openai_api = OpenAIChatClient("https://api.openai.com/v1", model="gpt", api_key="k")
    assert "extra_body" not in openai_api._kwargs(msgs, GenerationParams(repetition_penalty=1.0))
    with pytest.raises(BloomchatError, match="no repetition penalty"):
        openai_api._kwargs(msgs, GenerationParams())  # BLOOMChat's 1.2 cannot be applied there
