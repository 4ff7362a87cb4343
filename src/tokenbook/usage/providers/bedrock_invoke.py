"""Amazon Bedrock InvokeModel and InvokeModelWithResponseStream (model-native bodies).

API reference: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html,
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModelWithResponseStream.html
and the per-family bodies at https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters.html.

The body is whatever the model family speaks, so counts are read by shape (all disjoint, input
excluding cache reads and writes, as on the rest of Bedrock)::

    Anthropic   {"type": "message", "usage": {...}}, streamed as Messages events
                -> `anthropic_messages.anthropic_usage` (message_start, message_delta overrides)
    Nova        usage.inputTokens / outputTokens / cacheReadInputTokenCount /
                cacheWriteInputTokenCount (stream: {"metadata": {"usage": ...}})
    Titan text  inputTextTokenCount -> input; results[].tokenCount (body) or
                totalOutputTextTokenCount (stream) -> output
    Llama       prompt_token_count -> input; generation_token_count -> output
    OpenAI-style (gpt-oss, DeepSeek, AI21): usage.prompt_tokens... -> `openai_chat.chat_usage`

Every family also gets the counts from Bedrock itself, which fill what the body leaves unstated:

    InvokeModel response headers   x-amzn-bedrock-input-token-count, -output-token-count,
                                   -cache-read-input-token-count, -cache-write-input-token-count
    last stream chunk              "amazon-bedrock-invocationMetrics": {inputTokenCount,
                                   outputTokenCount, cacheReadInputTokenCount,
                                   cacheWriteInputTokenCount}

The stream is an AWS event-stream of ``chunk`` events, each ``{"bytes": base64(native JSON)}``;
exception frames are upstream errors. The invocation metrics (or the family's own final event)
make the final statement. Models other than Anthropic name no model in the body: the booked
model is the one in the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from tokenbook.usage.decoders import DecodeError, decode_chunk_bytes
from tokenbook.usage.providers.anthropic_messages import AnthropicMessagesParser, anthropic_usage
from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map
from tokenbook.usage.providers.openai_chat import chat_usage
from tokenbook.usage.types import TOKEN_TYPES, Extraction, Reason, ResponseContext, TokenUsage

__all__ = ["BedrockInvokeParser", "header_usage", "merge", "native_usage"]

_HEADERS = (
    ("input", "x-amzn-bedrock-input-token-count"),
    ("cached_input", "x-amzn-bedrock-cache-read-input-token-count"),
    ("cache_write", "x-amzn-bedrock-cache-write-input-token-count"),
    ("output", "x-amzn-bedrock-output-token-count"),
)
_METRICS = (
    ("input", "inputTokenCount"),
    ("cached_input", "cacheReadInputTokenCount"),
    ("cache_write", "cacheWriteInputTokenCount"),
    ("output", "outputTokenCount"),
)
_METRICS_KEY = "amazon-bedrock-invocationMetrics"
_METRICS_MARKER = b'"amazon-bedrock-invocationMetrics"'
# Anthropic Messages stream events, as Bedrock passes them (compact JSON, "type" first).
_ANTHROPIC_MARKERS = (
    b'"type":"message_',
    b'"type":"content_block_',
    b'"type":"ping"',
    b'"type":"error"',
)


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


def header_usage(headers: Mapping[str, str]) -> TokenUsage | None:
    """Counts from the ``x-amzn-bedrock-*-token-count`` response headers, if any."""
    values = {attr: _int_header(headers.get(name)) for attr, name in _HEADERS}
    usage = TokenUsage(**values)
    return None if usage.is_empty() else usage


def merge(first: TokenUsage | None, second: TokenUsage | None) -> TokenUsage | None:
    """Field by field: ``first`` where it states a count, else ``second``."""
    if first is None or second is None:
        return first or second
    values: dict[str, int | None] = {}
    for name in TOKEN_TYPES:
        value = getattr(first, name)
        values[name] = value if value is not None else getattr(second, name)
    return TokenUsage(**values)


def _metrics_usage(obj: JSONMap) -> TokenUsage | None:
    metrics = as_map(obj.get(_METRICS_KEY))
    if not metrics:
        return None
    usage = TokenUsage(**{attr: as_int(metrics.get(key)) for attr, key in _METRICS})
    return None if usage.is_empty() else usage


def native_usage(obj: JSONMap) -> TokenUsage | None:
    """Counts from a non-Anthropic model-native body or stream chunk, by its shape."""
    usage = as_map(obj.get("usage")) or as_map(as_map(obj.get("metadata")).get("usage"))
    if "inputTokens" in usage or "outputTokens" in usage:  # Nova
        return TokenUsage(
            input=as_int(usage.get("inputTokens")),
            cached_input=as_int(
                usage.get("cacheReadInputTokenCount", usage.get("cacheReadInputTokens"))
            ),
            cache_write=as_int(
                usage.get("cacheWriteInputTokenCount", usage.get("cacheWriteInputTokens"))
            ),
            output=as_int(usage.get("outputTokens")),
        )
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI-style bodies
        return chat_usage(usage)[0]
    if "inputTextTokenCount" in obj:  # Titan text
        output = as_int(obj.get("totalOutputTextTokenCount"))
        results = obj.get("results")
        if output is None and isinstance(results, list):
            counts = [as_int(as_map(r).get("tokenCount")) for r in results]
            output = sum(c for c in counts if c is not None) if counts else None
        return TokenUsage(input=as_int(obj.get("inputTextTokenCount")), output=output)
    if "prompt_token_count" in obj or "generation_token_count" in obj:  # Llama
        return TokenUsage(
            input=as_int(obj.get("prompt_token_count")),
            output=as_int(obj.get("generation_token_count")),
        )
    return None


class BedrockInvokeParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"', b'"outputText"', b'"generation"')
    DOC_TEXT_KEYS = (*TEXT_KEYS, b'"thinking"')
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"toolUse"',)
    TOOL_CALL_TOKENS = 30
    MODEL_KEY = None

    def __init__(self, ctx: ResponseContext) -> None:
        super().__init__(ctx)
        # Anthropic streams are Messages events; that parser already knows them.
        self._anthropic = AnthropicMessagesParser(ctx)
        self._native: TokenUsage | None = None  # a non-Anthropic family's own counts
        self._native_final = False
        self._metrics: TokenUsage | None = None

    def on_event(self, name: str, data: bytes) -> None:
        if name.endswith("Exception"):
            self.error = True
            return
        if name not in ("chunk", ""):
            return
        try:
            inner = decode_chunk_bytes(data)
        except DecodeError:
            self.bad_events += 1
            return
        if inner is not None:
            self._chunk(inner)

    def _chunk(self, inner: bytes) -> None:
        obj: JSONMap | None = None
        if any(marker in inner for marker in _ANTHROPIC_MARKERS):
            self._anthropic.on_event("", inner)
        elif b'"usage"' in inner or b"TokenCount" in inner or b"token_count" in inner:
            obj = self.load(inner)
            native = native_usage(obj) if obj is not None else None
            if native is not None:
                self._native = native
                if native.output is not None:  # Llama/Titan counts are cumulative
                    self.reset_text()
                # Nova's metadata event is its last word; Titan/Llama chunks count as they go.
                self._native_final = self._native_final or b'"metadata"' in inner
        elif self.final is None:
            self.count_text(inner)
        if _METRICS_MARKER in inner:
            obj = obj if obj is not None else self.load(inner)
            metrics = _metrics_usage(obj) if obj is not None else None
            if metrics is not None:
                self._metrics = metrics
                # Bedrock adds its invocation metrics to the stream's last chunk only.
                self.terminal = True

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        headers = header_usage(self.ctx.response_headers)
        body: TokenUsage | None
        if obj.get("type") == "message" and isinstance(obj.get("usage"), dict):
            self.take_model(obj.get("model"))
            body = anthropic_usage(as_map(obj.get("usage")))
        else:
            body = native_usage(obj)
        usage = merge(body, headers)
        if usage is not None:
            self.set_final(usage)

    def extraction(
        self, *, end_of_stream: bool, failure: Reason | None = None, detail: str = ""
    ) -> Extraction:
        anthropic = self._anthropic
        self.model = self.model or anthropic.model
        self.error = self.error or anthropic.error
        self.bad_events += anthropic.bad_events
        if self.final is None:
            native = anthropic.final or (self._native if self._native_final else None)
            final = merge(native, self._metrics)
            if anthropic.final is not None or self._metrics is not None or self._native_final:
                final = merge(final, header_usage(self.ctx.response_headers))
                if final is not None:
                    self.set_final(final)
            else:
                self.stated = anthropic.estimate_base() or self._native
                self.text_bytes += anthropic.text_bytes
                self.text_events += anthropic.text_events
                self.tool_calls += anthropic.tool_calls
        return super().extraction(end_of_stream=end_of_stream, failure=failure, detail=detail)
