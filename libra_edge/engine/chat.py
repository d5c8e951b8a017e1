"""Wrap the Libra user message in the model's own chat template (stored in the GGUF)."""

from __future__ import annotations

from dataclasses import dataclass

from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used only when a GGUF carries no chat template: Qwen2.5's ChatML with its default
# system prompt, which is what the Libra-Guard models were fine-tuned under.
FALLBACK_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class RenderedPrompt:
    """The full prompt text, split so the user's content is never read as control tokens."""

    before: str  # template text up to the user message (may hold special tokens)
    message: str  # the Libra user message, tokenized as plain text
    after: str  # template text after it (may hold special tokens)


class ChatTemplate:
    """A compiled chat template; renders one user message with the generation prompt."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.is_fallback = not source
        self.source = source or FALLBACK_TEMPLATE
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(self.source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, user_message: str) -> RenderedPrompt:
        """The prompt for one user message, with the assistant turn opened."""
        text = self._template.render(
            messages=[{"role": "user", "content": user_message}],
            add_generation_prompt=True,
            bos_token=self._bos,
            eos_token=self._eos,
        )
        start = text.rfind(user_message)
        if start < 0:  # a template that rewrites content: keep it whole (rare)
            return RenderedPrompt(text, "", "")
        end = start + len(user_message)
        return RenderedPrompt(text[:start], user_message, text[end:])
