"""An Ollama Modelfile beside the GGUF: `ollama create NAME -f Modelfile` then `ollama run NAME`.

Ollama renders prompts with Go templates, not Jinja, so the chat template is restated in Go's
text/template syntax. It renders what `bloomchat.chat_format.CHAT_TEMPLATE` renders with
add_generation_prompt=True: messages joined by newlines, `<human>: ` before a user message,
`<bot>: ` before an assistant message and EOS after it (the ids training put there), a system
message as a plain line, then `\\n<bot>:`. Sampling defaults are BLOOMChat's, as in `bloomchat chat`.
"""

from __future__ import annotations

from bloomchat.chat_format import BOT_TAG, HUMAN_TAG

#: BLOOMChat's sampling defaults (bloomchat.infer.params): temperature 0.8, top_p 0.9,
#: repetition penalty 1.2, 512 new tokens.
#: bloomchat.infer.GenerationParams' defaults in Ollama's names (tests/export checks they agree).
SAMPLING = (("temperature", 0.8), ("top_p", 0.9), ("top_k", 50), ("repeat_penalty", 1.2), ("num_predict", 512))


def go_template(eos: str) -> str:
    """The BLOOMChat prompt as an Ollama (Go text/template) TEMPLATE."""
    return (
        '{{- range $i, $m := .Messages }}{{ if $i }}\n{{ end }}'
        f'{{{{ if eq $m.Role "user" }}}}{HUMAN_TAG} {{{{ $m.Content }}}}'
        f'{{{{ else if eq $m.Role "assistant" }}}}{BOT_TAG} {{{{ $m.Content }}}}{eos}'
        '{{ else }}{{ $m.Content }}{{ end }}{{ end }}'
        f'\n{BOT_TAG}'
    )


def modelfile_text(gguf_name: str, *, eos: str | None, bloomchat_template: bool) -> str:
    """Modelfile for `gguf_name` (a path relative to the Modelfile).

    With a chat template other than BLOOMChat's (a base model's own, e.g. ChatML) no TEMPLATE
    is written: Ollama then reads the template stored in the GGUF.
    """
    lines = [f"FROM ./{gguf_name}", ""]
    if bloomchat_template:
        lines += [f'TEMPLATE """{go_template(eos or "")}"""', ""]
    for key, value in SAMPLING:
        lines.append(f"PARAMETER {key} {value}")
    if eos:
        lines.append(f'PARAMETER stop "{eos}"')
    if bloomchat_template:
        lines.append(f'PARAMETER stop "{HUMAN_TAG}"')  # as bloomchat's engine: never write the next human turn
    return "\n".join(lines) + "\n"
