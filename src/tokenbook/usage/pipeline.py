"""`open_adapter`: one response body in, one `Extraction` out.

An adapter is three stages, chosen once from the `ResponseContext`::

    body chunk ──► content decoder ──► framing ──► provider parser ──► Extraction
                   (gzip/br/zstd/     (SSE, NDJSON,   (one module per API,
                    deflate, chains)   JSON array,     `tokenbook.usage.providers`)
                                       event-stream,
                                       buffered JSON)

* The **API** comes from the provider id and the path (`detect.detect_api`).
* The **framing** comes from the response ``content-type`` and the API (Gemini's
  ``streamGenerateContent`` without ``alt=sse`` is a JSON array under ``application/json``).
  With no or an unknown content type, the first non-blank body byte decides (`_sniff`).
* Non-streamed JSON bodies are buffered up to ``ctx.max_json_bytes`` and parsed once at the
  end; past the cap the buffer is released and the result is ``TOO_LARGE``. Streams keep only
  the decoders' unfinished frame and the parser's O(1) state.

The contract of `UsageAdapter` holds for every adapter here: `feed` never raises (a decoding
error, or any bug, is remembered and all later work is skipped), `finish` never raises and
always returns an `Extraction` whose ``reason`` says what happened. Responses that cannot carry
usage get a fixed answer without looking at the body: ``status >= 400`` -> ``UPSTREAM_ERROR``,
count-token endpoints -> ``NOT_BILLED``, unknown APIs -> ``UNSUPPORTED``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import orjson

from tokenbook.usage.decoders import (
    ContentDecoder,
    DecodeError,
    EventStreamDecoder,
    JSONArrayDecoder,
    NDJSONDecoder,
    SSEDecoder,
    make_content_decoder,
)
from tokenbook.usage.detect import Api, detect_api, dialect_for
from tokenbook.usage.providers.anthropic_messages import AnthropicMessagesParser
from tokenbook.usage.providers.audio_transcriptions import AudioTranscriptionsParser
from tokenbook.usage.providers.base import Parser, requested_model
from tokenbook.usage.providers.bedrock_converse import BedrockConverseParser
from tokenbook.usage.providers.bedrock_invoke import BedrockInvokeParser
from tokenbook.usage.providers.cohere import CohereParser
from tokenbook.usage.providers.embeddings import EmbeddingsParser
from tokenbook.usage.providers.gemini import GeminiParser
from tokenbook.usage.providers.ollama import OllamaParser
from tokenbook.usage.providers.openai_chat import OpenAIChatParser
from tokenbook.usage.providers.openai_responses import OpenAIResponsesParser
from tokenbook.usage.types import Extraction, Reason, ResponseContext, UsageAdapter

__all__ = [
    "FixedAdapter",
    "Framing",
    "StreamAdapter",
    "choose_framing",
    "make_parser",
    "open_adapter",
]

#: Longest run of leading blank bytes kept while sniffing a body without a usable content type.
_SNIFF_LIMIT = 4096


class Framing(StrEnum):
    SSE = "sse"
    NDJSON = "ndjson"
    JSON_ARRAY = "json_array"
    EVENTSTREAM = "eventstream"
    JSON = "json"


_BY_CONTENT_TYPE: dict[str, Framing] = {
    "text/event-stream": Framing.SSE,
    "application/x-ndjson": Framing.NDJSON,
    "application/ndjson": Framing.NDJSON,
    "application/stream+json": Framing.NDJSON,
    "application/jsonl": Framing.NDJSON,
    "application/x-jsonlines": Framing.NDJSON,
    "application/vnd.amazon.eventstream": Framing.EVENTSTREAM,
}
_NDJSON_APIS = frozenset({Api.OLLAMA_CHAT, Api.OLLAMA_GENERATE, Api.COHERE_CHAT_V1})


def choose_framing(content_type: str, api: Api) -> Framing | None:
    """The framing for a response; ``None`` when only the body itself can tell."""
    framing = _BY_CONTENT_TYPE.get(content_type)
    if framing is not None:
        return framing
    if content_type == "application/json" or content_type.endswith("+json"):
        return Framing.JSON_ARRAY if api is Api.STREAM_GENERATE_CONTENT else Framing.JSON
    return None


def _sniff(first: int, api: Api) -> Framing | None:
    """The framing from the first non-blank body byte (no or an unknown content type)."""
    if first == 0x00:  # an event-stream prelude: a big-endian length below 16 MiB
        return Framing.EVENTSTREAM
    if first == 0x5B:  # '['
        return Framing.JSON_ARRAY if api is Api.STREAM_GENERATE_CONTENT else Framing.JSON
    if first == 0x7B:  # '{'
        return Framing.NDJSON if api in _NDJSON_APIS else Framing.JSON
    if first in b"dei:r":  # data: event: id: retry: or an SSE comment
        return Framing.SSE
    return None


def _chat(ctx: ResponseContext, dialect: str | None) -> Parser:
    return OpenAIChatParser(ctx, hidden_reasoning_in_total=dialect == "gemini")


def _completions(ctx: ResponseContext, dialect: str | None) -> Parser:
    return OpenAIChatParser(ctx, legacy=True)


def _plain(
    cls: Callable[[ResponseContext], Parser],
) -> Callable[[ResponseContext, str | None], Parser]:
    return lambda ctx, dialect: cls(ctx)


# Built once: a table made per response (17 closures) was a tenth of the meter's CPU per request.
_PARSERS: dict[Api, Callable[[ResponseContext, str | None], Parser]] = {
    Api.CHAT: _chat,
    Api.COMPLETIONS: _completions,
    Api.RESPONSES: _plain(OpenAIResponsesParser),
    Api.EMBEDDINGS: _plain(EmbeddingsParser),
    Api.MESSAGES: _plain(AnthropicMessagesParser),
    Api.GENERATE_CONTENT: _plain(GeminiParser),
    Api.STREAM_GENERATE_CONTENT: _plain(GeminiParser),
    Api.STREAM_GENERATE_CONTENT_SSE: _plain(GeminiParser),
    Api.CONVERSE: _plain(BedrockConverseParser),
    Api.CONVERSE_STREAM: _plain(BedrockConverseParser),
    Api.INVOKE: _plain(BedrockInvokeParser),
    Api.INVOKE_STREAM: _plain(BedrockInvokeParser),
    Api.COHERE_CHAT_V1: _plain(CohereParser),
    Api.COHERE_CHAT_V2: _plain(CohereParser),
    Api.OLLAMA_CHAT: _plain(OllamaParser),
    Api.OLLAMA_GENERATE: _plain(OllamaParser),
    Api.AUDIO_TRANSCRIPTIONS: _plain(AudioTranscriptionsParser),
}


def make_parser(api: Api, ctx: ResponseContext, dialect: str | None) -> Parser | None:
    """The provider parser for ``api``; ``None`` for APIs that book nothing."""
    factory = _PARSERS.get(api)
    return factory(ctx, dialect) if factory is not None else None


class FixedAdapter:
    """An adapter whose answer does not depend on the body (errors, count_tokens, unknown)."""

    def __init__(self, extraction: Extraction) -> None:
        self._extraction = extraction

    def feed(self, chunk: bytes) -> None:
        del chunk

    def finish(self, *, end_of_stream: bool) -> Extraction:
        del end_of_stream
        return self._extraction

    @property
    def complete(self) -> bool:
        return False  # the body is not read: wait for its end like any other

    def retained_bytes(self) -> int:
        return 0


class StreamAdapter:
    """Content decoding, then framing, then the provider parser (see the module docstring)."""

    def __init__(
        self,
        ctx: ResponseContext,
        api: Api,
        parser: Parser,
        content: ContentDecoder,
        framing: Framing | None,
    ) -> None:
        self._ctx = ctx
        self._api = api
        self._parser = parser
        self._content = content
        self._framing: Framing | None = None
        self._frame: Callable[[bytes], None] = self._sniffing
        self._flush_frames: Callable[[], None] = _nothing
        self._sniffed = bytearray()
        self._json = bytearray()
        self._failure: Reason | None = None
        self._detail = ""
        self._result: Extraction | None = None
        if framing is not None:
            self._use(framing)

    # --- UsageAdapter -----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self._failure is not None or self._result is not None or not chunk:
            return
        try:
            for piece in self._content.decode(chunk):
                self._frame(piece)
                if self._stopped():
                    return
        except DecodeError as exc:
            self._fail(Reason.PARSE_ERROR, str(exc))
        except Exception as exc:  # never let a bug reach the meter; book it as unparsable
            self._fail(Reason.PARSE_ERROR, f"internal error: {type(exc).__name__}")

    def finish(self, *, end_of_stream: bool) -> Extraction:
        if self._result is not None:
            return self._result
        try:
            self._result = self._finish(end_of_stream)
        except Exception as exc:  # same promise as feed(): a result, never an exception
            self._result = Extraction(
                model=requested_model(self._ctx),
                reason=Reason.PARSE_ERROR,
                detail=f"internal error: {type(exc).__name__}",
            )
        return self._result

    @property
    def complete(self) -> bool:
        return self._failure is None and self._parser.terminal

    def retained_bytes(self) -> int:
        """Bytes held by this adapter's own buffers and its parser (not the decoders')."""
        return len(self._json) + len(self._sniffed) + self._parser.retained_bytes()

    # --- stages -----------------------------------------------------------------------------

    def _finish(self, end_of_stream: bool) -> Extraction:
        if self._failure is None and end_of_stream:
            # Only a complete body is flushed: a cut stream's unfinished frame is not an event.
            try:
                for piece in self._content.flush():
                    self._frame(piece)
                if self._failure is None and self._framing is None:
                    self._fail(Reason.NO_USAGE, "empty body")
                if self._failure is None:
                    self._flush_frames()
            except DecodeError as exc:
                self._fail(Reason.PARSE_ERROR, str(exc))
        if self._framing is Framing.JSON and self._failure is None:
            self._parse_document(end_of_stream)
        return self._parser.extraction(
            end_of_stream=end_of_stream, failure=self._failure, detail=self._detail
        )

    def _parse_document(self, end_of_stream: bool) -> None:
        body, self._json = bytes(self._json), bytearray()
        if not body.strip():
            if end_of_stream:
                self._failure, self._detail = Reason.NO_USAGE, "empty body"
            return
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            if end_of_stream:
                self._failure, self._detail = Reason.PARSE_ERROR, "body is not valid JSON"
            else:
                # A cut body: estimate from the generated text that did arrive.
                self._parser.count_text(body, self._parser.DOC_TEXT_KEYS)
            return
        self._parser.on_document(doc)

    def _use(self, framing: Framing) -> None:
        self._framing = framing
        parser = self._parser
        if framing is Framing.JSON:
            self._frame = self._buffer_json
            return
        if framing is Framing.SSE:
            sse = SSEDecoder()

            def frame_sse(data: bytes) -> None:
                for event in sse.decode(data):
                    parser.on_event(event.event, event.data)

            def flush_sse() -> None:
                for event in sse.flush():
                    parser.on_event(event.event, event.data)

            self._frame, self._flush_frames = frame_sse, flush_sse
        elif framing is Framing.EVENTSTREAM:
            stream = EventStreamDecoder()

            def frame_es(data: bytes) -> None:
                for message in stream.decode(data):
                    kind = message.message_type
                    if kind in ("exception", "error"):
                        parser.on_exception(message.exception_type or message.event_type or kind)
                    else:
                        parser.on_event(message.event_type or "", message.payload)

            def flush_es() -> None:
                stream.flush()

            self._frame, self._flush_frames = frame_es, flush_es
        else:
            lines: NDJSONDecoder | JSONArrayDecoder = (
                NDJSONDecoder() if framing is Framing.NDJSON else JSONArrayDecoder()
            )

            def frame_lines(data: bytes) -> None:
                for item in lines.decode(data):
                    parser.on_event("", item)

            def flush_lines() -> None:
                for item in lines.flush():
                    parser.on_event("", item)

            self._frame, self._flush_frames = frame_lines, flush_lines

    def _sniffing(self, data: bytes) -> None:
        self._sniffed += data
        stripped = self._sniffed.lstrip()
        if not stripped:
            if len(self._sniffed) > _SNIFF_LIMIT:
                self._fail(Reason.UNSUPPORTED, "body starts with a long run of blanks")
            return
        framing = _sniff(stripped[0], self._api)
        if framing is None:
            ctype = self._ctx.content_type or "none"
            self._fail(Reason.UNSUPPORTED, f"unrecognised body (content-type {ctype[:64]})")
            return
        held, self._sniffed = bytes(self._sniffed), bytearray()
        self._use(framing)
        self._frame(held)

    def _buffer_json(self, data: bytes) -> None:
        if len(self._json) + len(data) > self._ctx.max_json_bytes:
            self._json = bytearray()
            self._fail(
                Reason.TOO_LARGE, f"JSON body over the {self._ctx.max_json_bytes}-byte buffer cap"
            )
            return
        self._json += data

    def _stopped(self) -> bool:
        return self._failure is not None

    def _fail(self, reason: Reason, detail: str) -> None:
        if self._failure is None:
            self._failure, self._detail = reason, detail
        self._json = bytearray()
        self._sniffed = bytearray()


def _nothing() -> None:
    return None


def open_adapter(ctx: ResponseContext, *, dialect: str | None = None) -> UsageAdapter:
    """The usage adapter for one response (see the module docstring).

    ``dialect`` overrides the provider's default (`detect.DEFAULT_DIALECTS`), for providers an
    operator added in the config.
    """
    spoken = dialect_for(ctx.provider, dialect)
    api = detect_api(ctx.provider, ctx.path, ctx.query, ctx.request_headers, dialect=spoken)
    model = requested_model(ctx)
    if ctx.status >= 400:
        return FixedAdapter(
            Extraction(model=model, reason=Reason.UPSTREAM_ERROR, detail=f"HTTP {ctx.status}")
        )
    if api is Api.COUNT_TOKENS:
        return FixedAdapter(
            Extraction(
                model=model,
                reason=Reason.NOT_BILLED,
                detail="token count estimate, not consumption",
            )
        )
    if not 200 <= ctx.status < 300:
        return FixedAdapter(
            Extraction(model=model, reason=Reason.NO_USAGE, detail=f"HTTP {ctx.status}")
        )
    parser = make_parser(api, ctx, spoken)
    if parser is None:
        return FixedAdapter(
            Extraction(
                model=model,
                reason=Reason.UNSUPPORTED,
                detail=f"no usage parser for {ctx.provider} {ctx.path[:80]}",
            )
        )
    framing = choose_framing(ctx.content_type, api)
    max_decoded = max(ctx.max_json_bytes * 2, 64 * 1024 * 1024)
    try:
        content = make_content_decoder(ctx.content_encoding, max_output_bytes=max_decoded)
    except DecodeError as exc:
        return FixedAdapter(Extraction(model=model, reason=Reason.UNSUPPORTED, detail=str(exc)))
    return StreamAdapter(ctx, api, parser, content, framing)
