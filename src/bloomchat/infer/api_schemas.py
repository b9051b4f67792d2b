"""Request bodies of the OpenAI-compatible API (pydantic: they also make /openapi.json).

Every client string is checked to be real Unicode text (`Text`): a lone surrogate is valid JSON
but would crash the tokenizer, so it is a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bloomchat.asgi_limits import utf8_text
from bloomchat.infer.params import MAX_REPETITION_PENALTY, MAX_STOP_STRINGS, MAX_TOP_K

#: Largest request body accepted: a 2048-token context is ~10 KB of text, so 1 MiB
#: (1024 * 1024 bytes) leaves room for long contexts of big models while refusing floods.
MAX_BODY_BYTES = 1024 * 1024
#: Most messages in one conversation (a 2048-token context cannot hold more anyway).
MAX_MESSAGES = 1024
#: Most prompts in one /v1/completions call.
MAX_PROMPTS = 16

Text = Annotated[str, AfterValidator(utf8_text)]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logit_bias...)


class TextPart(_Req):
    type: Literal["text"]
    text: Text = Field(max_length=MAX_BODY_BYTES)


class ChatMessage(_Req):
    role: Literal["system", "user", "assistant"]
    content: Union[Text, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class SamplingFields(_Req):
    model: Text = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K,
                              description="an extension: keep the k most likely tokens (0 = off; default 50)")
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    repetition_penalty: float | None = Field(None, gt=0, le=MAX_REPETITION_PENALTY)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Union[Text, list[Text], None] = None
    ignore_eos: bool = Field(False, description="an extension (as vLLM's): go on past EOS, for fixed-length "
                                                "benchmarks")
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def stop_list(self) -> tuple[str, ...] | None:
        """The stop strings, or None when they break the API's bounds."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            return None
        return tuple(stops)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20)


class CompletionRequest(SamplingFields):
    prompt: Union[Text, list[Text]]
    echo: bool = False


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every error answers, as the OpenAI API does."""

    error: ErrorDetail
