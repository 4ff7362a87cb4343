"""Anthropic Messages (direct, on Vertex ``:rawPredict``, and inside Bedrock InvokeModel).

API reference: https://docs.anthropic.com/en/api/messages (``usage``) and
https://docs.anthropic.com/en/docs/build-with-claude/streaming (events).

Field mapping (already disjoint: ``input_tokens`` excludes cache reads and writes)::

    input_tokens                  -> input
    cache_read_input_tokens       -> cached_input
    cache_creation_input_tokens   -> cache_write   (cache_creation.ephemeral_{5m,1h} split by TTL)
    output_tokens                 -> output        (thinking is inside; no separate count)
    (none)                        -> reasoning stays unknown

Streams: ``message_start.message.usage`` states input and cache counts (and a placeholder
``output_tokens``); then every non-null field of ``message_delta.usage`` overrides it —
``output_tokens`` there is cumulative, and newer API versions repeat ``input_tokens`` and the
cache fields, which can be *larger* than at the start when server tools ran
(https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool). The
``message_delta`` is the final statement. ``server_tool_use`` counts requests, not tokens.
With context compaction (beta) the top-level numbers describe the final iteration; the
``iterations[]`` array is not added in (the corpus books top-level numbers).

No total is stated. An ``error`` event (e.g. ``overloaded_error``) without a final
``message_delta`` is an upstream error; a cut stream keeps ``message_start``'s counts and
estimates the output from the text, thinking and tool-input deltas.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map
from tokenbook.usage.types import TokenUsage

__all__ = ["AnthropicMessagesParser", "anthropic_usage"]

_FIELDS = (
    ("input", "input_tokens"),
    ("cached_input", "cache_read_input_tokens"),
    ("cache_write", "cache_creation_input_tokens"),
    ("output", "output_tokens"),
)


def anthropic_usage(usage: JSONMap, base: TokenUsage | None = None) -> TokenUsage:
    """Counts from an Anthropic ``usage`` object; its non-null fields override ``base``."""
    values: dict[str, int | None] = {}
    for attr, key in _FIELDS:
        value = as_int(usage.get(key))
        values[attr] = value if value is not None else getattr(base, attr, None)
    return TokenUsage(**values)


class AnthropicMessagesParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"', b'"thinking"', b'"partial_json"')
    DOC_TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"', b'"thinking"')
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"type":"tool_use"', b'"type":"server_tool_use"')
    TOOL_CALL_TOKENS = 30  # measured: a Claude tool call costs ~30-40 tokens beyond its input JSON
    MODEL_KEY = None  # message_start is parsed anyway and names the model

    def on_event(self, name: str, data: bytes) -> None:
        if name == "message_stop":  # the last SSE event (Bedrock's unnamed ones: not relied on)
            self.terminal = True
            return
        # Bedrock InvokeModelWithResponseStream passes the same events without SSE names.
        if name == "message_delta" or (not name and b'"message_delta"' in data):
            obj = self.load(data)
            if obj is not None and obj.get("type") == "message_delta":
                usage = as_map(obj.get("usage"))
                if usage:
                    self.set_final(anthropic_usage(usage, self.stated))
            return
        if name == "message_start" or (not name and b'"message_start"' in data):
            obj = self.load(data)
            if obj is not None and obj.get("type") == "message_start":
                message = as_map(obj.get("message"))
                self.take_model(message.get("model"))
                usage = as_map(message.get("usage"))
                if usage:
                    # Its output_tokens is a placeholder (1): keep it for an override base, but
                    # estimate a cut stream's output from the text instead.
                    self.stated = anthropic_usage(usage)
            return
        if name == "error" or (not name and b'"error"' in data and b'"type":"error"' in data):
            self.error = True
            return
        if self.final is None:
            self.count_text(data)

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        if obj.get("type") == "error" or obj.get("error"):
            self.error = True
            return
        self.take_model(obj.get("model"))
        usage = as_map(obj.get("usage"))
        if usage:
            self.set_final(anthropic_usage(usage))

    def estimate_base(self) -> TokenUsage | None:
        """What ``message_start`` stated, minus its placeholder output count."""
        if self.stated is None:
            return None
        s = self.stated
        return TokenUsage(input=s.input, cached_input=s.cached_input, cache_write=s.cache_write)
