"""OpenAI Responses API, and its copies (Azure, OpenRouter, DeepSeek, Bedrock mantle).

API reference: https://platform.openai.com/docs/api-reference/responses/object (``usage``) and
https://platform.openai.com/docs/api-reference/responses-streaming (events).

Field mapping (``response.usage`` of the body, or of the terminal stream event
``response.completed`` / ``response.incomplete`` / ``response.failed``)::

    input_tokens                                ⊇ cached and cache-write tokens
    input_tokens_details.cached_tokens          -> cached_input
    input_tokens_details.cache_write_tokens     -> cache_write  (explicit caching, OpenRouter)
    input_tokens - cached - cache_write         -> input
    output_tokens                               ⊇ reasoning tokens
    output_tokens_details.reasoning_tokens      -> reasoning
    output_tokens - reasoning                   -> output
    total_tokens                                -> provider_total

``response.created`` and ``response.in_progress`` carry ``"usage": null``. An ``error`` event, or
``response.failed`` with ``usage: null``, is an upstream error. Generated text for the estimate is
the ``delta`` of the ``*.delta`` events only: the ``*.done`` events and ``response.completed``
repeat the whole text and would count it twice.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map, sub
from tokenbook.usage.scan import has_object_value
from tokenbook.usage.types import TokenUsage

__all__ = ["OpenAIResponsesParser", "responses_usage"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_usage(usage: JSONMap) -> tuple[TokenUsage, int | None]:
    """Disjoint counts and the stated total from a Responses ``usage`` object."""
    prompt = as_int(usage.get("input_tokens"))
    completion = as_int(usage.get("output_tokens"))
    in_details = as_map(usage.get("input_tokens_details"))
    cached = as_int(in_details.get("cached_tokens"))
    cache_write = as_int(in_details.get("cache_write_tokens"))
    reasoning = as_int(as_map(usage.get("output_tokens_details")).get("reasoning_tokens"))
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
        as_int(usage.get("total_tokens")),
    )


class OpenAIResponsesParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"delta"',)
    DOC_TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"', b'"arguments"')

    def on_event(self, name: str, data: bytes) -> None:
        self.scan_model(data)
        if b'"usage"' in data and has_object_value(data, b'"usage"'):
            obj = self.load(data)
            if obj is not None:
                self._terminal(obj)
            return
        if name == "error" or b'"error"' in data:
            obj = self.load(data)
            kind = name or (str(obj.get("type", "")) if obj is not None else "")
            if kind in ("error", "response.failed"):
                self.error = True
            return
        if self.final is None and b"response.audio.delta" not in data:  # base64 audio, not text
            self.count_text(data)
            if b'"response.output_item.added"' in data and b'"function_call"' in data:
                self.tool_calls += 1

    def _terminal(self, event: JSONMap) -> None:
        response = as_map(event.get("response"))
        usage = response.get("usage")
        if str(event.get("type", "")) not in _TERMINAL or not isinstance(usage, dict):
            return
        self.take_model(response.get("model"))
        self.set_final(*responses_usage(usage))
        self.terminal = True  # response.completed / incomplete / failed: the stream's last

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        self.take_model(obj.get("model"))
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            self.set_final(*responses_usage(usage))
        elif obj.get("error"):
            self.error = True
