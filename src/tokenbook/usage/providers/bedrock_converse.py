"""Amazon Bedrock Converse and ConverseStream.

API reference: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html and
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html.

Field mapping (``usage``; already disjoint: ``inputTokens`` excludes cache reads and writes)::

    inputTokens             -> input
    cacheReadInputTokens    -> cached_input
    cacheWriteInputTokens   -> cache_write
    outputTokens            -> output     (reasoning content is inside; no separate count)
    totalTokens             -> provider_total  (= input + output + cacheRead + cacheWrite)

The stream is an AWS event-stream whose ``metadata`` event carries ``usage`` (and ``metrics``);
the other events (``messageStart``, ``contentBlockDelta``, ...) carry text, reasoning text and
tool input, measured for the estimate. Exception frames (``:message-type: exception``, e.g.
``throttlingException``, ``modelStreamErrorException``) are upstream errors. Converse returns no
model name: the booked model is the one in the request path.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map
from tokenbook.usage.types import TokenUsage

__all__ = ["BedrockConverseParser", "converse_usage"]


def converse_usage(usage: JSONMap) -> tuple[TokenUsage, int | None]:
    """Counts and the stated total from a Converse ``usage`` (``TokenUsage``) object."""
    return (
        TokenUsage(
            input=as_int(usage.get("inputTokens")),
            cached_input=as_int(usage.get("cacheReadInputTokens")),
            cache_write=as_int(usage.get("cacheWriteInputTokens")),
            output=as_int(usage.get("outputTokens")),
        ),
        as_int(usage.get("totalTokens")),
    )


class BedrockConverseParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"', b'"input"')
    DOC_TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"',)
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"start":{"toolUse"',)
    TOOL_CALL_TOKENS = 30  # Claude and Nova tool calls cost far more than their input JSON
    MODEL_KEY = None  # Converse names no model

    def on_event(self, name: str, data: bytes) -> None:
        if name == "metadata" or (not name and b'"usage"' in data):
            obj = self.load(data)
            usage = as_map(obj.get("usage")) if obj is not None else {}
            if usage:
                self.set_final(*converse_usage(usage))
                # `metadata` is ConverseStream's last event (after `messageStop`).
                self.terminal = name == "metadata"
            return
        if name.endswith("Exception"):
            self.error = True
            return
        if self.final is None:
            self.count_text(data)

    def on_document(self, doc: object) -> None:
        usage = as_map(as_map(doc).get("usage"))
        if usage:
            self.set_final(*converse_usage(usage))
