"""Cohere Chat, v2 (``/v2/chat``) and v1 (``/v1/chat``).

API reference: https://docs.cohere.com/reference/chat (v2, ``usage``),
https://docs.cohere.com/reference/chat-stream (v2 events), https://docs.cohere.com/v1/reference/chat
(v1, ``meta``) and https://docs.cohere.com/docs/streaming (v1 ``stream-end``).

Cohere states two sets of counts: ``tokens`` (what the model processed, including the system
and template tokens) and ``billed_units`` (what is charged). tokenbook books ``tokens``, as the
corpus does, and falls back to ``billed_units`` only when ``tokens`` is absent::

    v2: usage.tokens.input_tokens    ⊇ usage.cached_tokens
        usage.cached_tokens              -> cached_input
        input_tokens - cached_tokens     -> input
        usage.tokens.output_tokens       -> output
    v1: meta.tokens.input_tokens         -> input
        meta.tokens.output_tokens        -> output

Streams: v2 is SSE whose ``message-end`` event has ``delta.usage``; v1 is NDJSON
(``application/stream+json``) whose ``stream-end`` line has ``response.meta``. Cohere states no
total in the body (the ``num_tokens`` response header is the *billed* total, so it is not used
as the provider total here), and no model.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map, sub
from tokenbook.usage.types import TokenUsage

__all__ = ["CohereParser", "cohere_usage"]


def cohere_usage(block: JSONMap) -> TokenUsage | None:
    """Counts from a v2 ``usage`` or a v1 ``meta`` object; ``None`` if it states none."""
    tokens = as_map(block.get("tokens")) or as_map(block.get("billed_units"))
    if not tokens:
        return None
    prompt = as_int(tokens.get("input_tokens"))
    cached = as_int(block.get("cached_tokens"))
    if prompt is not None and cached is not None:
        cached = min(cached, prompt)
    usage = TokenUsage(
        input=sub(prompt, cached),
        cached_input=cached,
        output=as_int(tokens.get("output_tokens")),
    )
    return None if usage.is_empty() else usage


class CohereParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"', b'"tool_plan"')
    DOC_TEXT_KEYS = TEXT_KEYS
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"tool-call-start"',)
    MODEL_KEY = None

    def on_event(self, name: str, data: bytes) -> None:
        if b'"message-end"' in data or b'"stream-end"' in data:
            obj = self.load(data)
            if obj is None:
                return
            kind = str(obj.get("type") or obj.get("event_type") or name)
            if kind == "message-end":  # v2
                delta = as_map(obj.get("delta"))
                usage = cohere_usage(as_map(delta.get("usage")))
                finish = delta.get("finish_reason")
            elif kind == "stream-end":  # v1
                response = as_map(obj.get("response"))
                usage = cohere_usage(as_map(response.get("meta")))
                finish = obj.get("finish_reason") or response.get("finish_reason")
            else:
                return
            if usage is not None:
                self.set_final(usage)
            elif finish == "ERROR":
                self.error = True
            # Both are the stream's last event (Cohere's streaming reference).
            self.terminal = True
            return
        if name == "error":
            self.error = True
            return
        if self.final is None:
            self.count_text(data)

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        usage = cohere_usage(as_map(obj.get("usage"))) or cohere_usage(as_map(obj.get("meta")))
        if usage is not None:
            self.set_final(usage)
