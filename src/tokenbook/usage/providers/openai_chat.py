"""OpenAI Chat Completions and legacy Completions, and every provider that copies them.

API reference: https://platform.openai.com/docs/api-reference/chat/object (``usage``),
https://platform.openai.com/docs/api-reference/chat-streaming (chunks, ``stream_options.
include_usage``), https://platform.openai.com/docs/api-reference/completions/object.
Compatible providers read the same way: Azure OpenAI, Mistral, Groq, DeepSeek, OpenRouter,
Together, Cerebras, the Hugging Face router, z.ai, Snowflake Cortex, Ollama ``/v1``, vLLM.

Field mapping (``usage`` of the body, or of the last stream chunk that has one)::

    prompt_tokens                               ⊇ cached and cache-write tokens
    prompt_tokens_details.cached_tokens         -> cached_input
      (DeepSeek without details: prompt_cache_hit_tokens,
       https://api-docs.deepseek.com/api/create-chat-completion)
    prompt_tokens_details.cache_write_tokens    -> cache_write   (OpenAI explicit caching;
        OpenRouter: https://openrouter.ai/docs/use-cases/usage-accounting)
    prompt_tokens - cached - cache_write        -> input
    completion_tokens                           ⊇ reasoning (and audio) tokens
    completion_tokens_details.reasoning_tokens  -> reasoning
    completion_tokens - reasoning               -> output
    total_tokens                                -> provider_total

Quirks handled:

* Streams carry usage only with ``include_usage`` (OpenAI: a last chunk with ``choices: []``);
  Mistral, DeepSeek and Together put it on the last content chunk; every other chunk has
  ``"usage": null`` or none. Without it the stream is estimated (`base.Parser.extraction`).
* Groq (https://console.groq.com/docs/api-reference#chat-create) used to send usage only as
  ``x_groq.usage``; newer streams send both copies in one chunk. Counted once, top level first.
* ``n>1`` interleaves choices; the single usage chunk covers them all.
* Azure's first chunk has ``model: ""`` and ``choices: []``; the model comes from a later chunk.
* Gemini's OpenAI-compatible endpoint (https://ai.google.dev/gemini-api/docs/openai) reports
  thinking only inside ``total_tokens``: ``total - prompt - completion`` becomes ``reasoning``
  there, so the booked sum is the billed total.
* A part larger than its whole (OpenRouter: ``reasoning_tokens`` 11 of ``completion_tokens`` 10)
  is capped at the whole, so the split still adds up to ``total_tokens``.
* An ``error`` (an ``event: error`` frame or an ``"error"`` object in a chunk or body) without
  usage is an upstream error; a chunk that carries both (OpenRouter) still books its usage.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map, sub
from tokenbook.usage.scan import has_object_value, text_counter
from tokenbook.usage.types import ResponseContext, TokenUsage

__all__ = ["OpenAIChatParser", "chat_usage"]


def chat_usage(
    usage: JSONMap, *, hidden_reasoning_in_total: bool = False
) -> tuple[TokenUsage, int | None]:
    """Disjoint counts and the stated total from a Chat Completions ``usage`` object."""
    prompt = as_int(usage.get("prompt_tokens"))
    completion = as_int(usage.get("completion_tokens"))
    total = as_int(usage.get("total_tokens"))
    prompt_details = as_map(usage.get("prompt_tokens_details"))
    cached = as_int(prompt_details.get("cached_tokens"))
    if cached is None:
        cached = as_int(usage.get("prompt_cache_hit_tokens"))
    cache_write = as_int(prompt_details.get("cache_write_tokens"))
    reasoning = as_int(as_map(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    if (
        hidden_reasoning_in_total
        and reasoning is None
        and prompt is not None
        and completion is not None
        and total is not None
        and total > prompt + completion
    ):
        reasoning = total - prompt - completion
        completion += reasoning
    if prompt is not None:
        cached = min(cached, prompt) if cached is not None else None
        cache_write = min(cache_write, prompt - (cached or 0)) if cache_write is not None else None
    if completion is not None and reasoning is not None:
        reasoning = min(reasoning, completion)
    return (
        TokenUsage(
            input=sub(prompt, cached, cache_write),
            cached_input=cached,
            cache_write=cache_write,
            output=sub(completion, reasoning),
            reasoning=reasoning,
        ),
        total,
    )


def _usage_object(obj: JSONMap) -> JSONMap | None:
    usage = obj.get("usage")
    if isinstance(usage, dict) and usage:
        return usage
    groq = as_map(as_map(obj.get("x_groq")).get("usage"))
    return groq or None


class OpenAIChatParser(Parser):
    """Chat Completions (``legacy=False``) or legacy Completions (``legacy=True``)."""

    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (
        b'"content"',
        b'"reasoning_content"',  # DeepSeek, vLLM
        b'"reasoning"',  # Groq, OpenRouter, Ollama
        b'"refusal"',
        b'"arguments"',  # tool calls
    )
    DOC_TEXT_KEYS = TEXT_KEYS
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"type":"function"',)  # a tool call's 1st delta
    _LEGACY_TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"',)

    def __init__(
        self, ctx: ResponseContext, *, legacy: bool = False, hidden_reasoning_in_total: bool = False
    ) -> None:
        super().__init__(ctx)
        if legacy:
            self._text_size = text_counter(self._LEGACY_TEXT_KEYS)
        self._hidden_reasoning = hidden_reasoning_in_total

    def on_event(self, name: str, data: bytes) -> None:
        if len(data) < 16 and data.strip() == b"[DONE]":  # the last event; usage comes before
            self.terminal = True
            return
        self.scan_model(data)
        has_usage = b'"usage"' in data and has_object_value(data, b'"usage"')
        has_error = name == "error" or b'"error"' in data
        if not (has_usage or has_error):
            if self.final is None:
                self.count_text(data)
            return
        obj = self.load(data)
        if obj is None:
            if name == "error":
                self.error = True
            return
        self._take(obj, error_event=name == "error")
        if self.final is None:
            self.count_text(data)

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        self.take_model(obj.get("model"))
        self._take(obj, error_event=False)

    def _take(self, obj: JSONMap, *, error_event: bool) -> None:
        usage = _usage_object(obj)
        if usage is not None:
            self.take_model(obj.get("model"))
            split, total = chat_usage(usage, hidden_reasoning_in_total=self._hidden_reasoning)
            self.set_final(split, total)
        if error_event or obj.get("error"):
            self.error = True
