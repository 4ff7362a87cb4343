"""What every provider parser shares: the state it keeps and how it becomes an `Extraction`.

A parser sees one response, either as a stream of framed payloads (`Parser.on_event`: an SSE
event, an NDJSON line, a JSON-array element, an event-stream message) or as one parsed JSON
document (`Parser.on_document`). It never sees raw body bytes, content encodings or framing;
`tokenbook.usage.pipeline` does that. Parsers keep O(1) state: the last usage statement, the
model, and a byte count of the generated text seen since the provider last stated an output count
(for the estimate of a stream that was cut or ended without usage).

How a parser's state becomes an `Extraction` (in `Parser.extraction`):

* final usage seen -> ``REPORTED`` (even if the stream was cut after it, or an error followed);
* an error event or error document, and no usage -> ``UPSTREAM_ERROR``, no tokens;
* otherwise, for generation APIs -> ``ESTIMATED``: what the provider stated so far
  (e.g. Anthropic ``message_start``) plus `estimate.estimate_output_tokens` of the text seen
  since, with reason ``TRUNCATED`` (cut), ``NO_USAGE`` (ended) or the pipeline's failure reason;
* for APIs without generated text (embeddings, transcription) -> no tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from tokenbook.usage.detect import request_model_from_path
from tokenbook.usage.estimate import PER_TOOL_CALL, estimate_output_tokens
from tokenbook.usage.scan import first_string_value, string_value_bytes, text_counter
from tokenbook.usage.types import Extraction, Reason, ResponseContext, Source, TokenUsage

__all__ = ["Parser", "as_int", "as_map", "requested_model", "sub"]

JSONMap = Mapping[str, Any]


def requested_model(ctx: ResponseContext) -> str | None:
    """The model the request asked for: the meter's value, else the one named in the URL."""
    return ctx.request_model or request_model_from_path(ctx.path)


def as_int(value: object) -> int | None:
    """A token count from JSON: ints (and integral floats) pass, anything else is unknown."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_map(value: object) -> JSONMap:
    """``value`` if it is a JSON object, else an empty mapping (so lookups can chain)."""
    if type(value) is dict:  # what orjson gives; the ABC check below costs ~3 µs a call
        return value
    return value if isinstance(value, Mapping) else _EMPTY


_EMPTY: JSONMap = MappingProxyType({})


def sub(total: int | None, *parts: int | None) -> int | None:
    """``total`` minus the stated parts (unstated parts count 0); ``None`` if total is unknown.

    Never below zero: a provider that states a part larger than its whole (OpenRouter once sent
    ``reasoning_tokens`` 11 in ``completion_tokens`` 10) would otherwise book negative tokens.
    """
    if total is None:
        return None
    for p in parts:  # a loop, not sum(generator): this runs for every booked response
        if p is not None:
            total -= p
    return total if total > 0 else 0


class Parser:
    """Base class of the provider parsers; subclasses override the ``on_*`` hooks."""

    #: Keys whose string values are generated text in stream events (for the estimate).
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = ()
    #: Keys whose string values are generated text in a whole JSON document (a cut body).
    DOC_TEXT_KEYS: ClassVar[tuple[bytes, ...]] = ()
    #: Whether the response is generated text, so a missing count can be estimated from it.
    ESTIMATES: ClassVar[bool] = True
    #: Byte markers of the start of one tool call in a stream payload (each occurrence counts).
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = ()
    #: Tokens a tool call costs beyond its streamed arguments (see `estimate`).
    TOOL_CALL_TOKENS: ClassVar[int] = PER_TOOL_CALL
    #: Key under which the stream names the model (found once by a byte scan, not a parse).
    MODEL_KEY: ClassVar[bytes | None] = b'"model"'

    def __init__(self, ctx: ResponseContext) -> None:
        self.ctx = ctx
        self.model: str | None = None
        self.final: TokenUsage | None = None  # the provider's final statement
        self.stated: TokenUsage | None = None  # counts stated before the final one
        self.total: int | None = None  # the total the provider states with `final`
        self.text_bytes = 0  # generated text since the last stated output count
        self.text_events = 0  # payloads that carried some of that text
        self.tool_calls = 0  # tool calls started since then
        self.error = False  # an error event / error document
        self.bad_events = 0  # payloads that are not valid JSON
        # The provider's last event of a stream was seen (OpenAI's `[DONE]`, Anthropic's
        # `message_stop`, a terminal Responses event, ...): a meter may book without waiting for
        # the end of the body, which Envoy's observability mode does not always forward.
        self.terminal = False
        self._text_size = text_counter(self.TEXT_KEYS)

    # --- hooks -----------------------------------------------------------------------------

    def on_event(self, name: str, data: bytes) -> None:
        """One framed payload of a stream (``name`` is the SSE/event-stream event, or "")."""

    def on_document(self, doc: object) -> None:
        """The whole parsed JSON body of a non-streamed response."""

    def on_exception(self, kind: str) -> None:
        """An out-of-band error frame (AWS event-stream ``:message-type: exception``)."""
        del kind
        self.error = True

    def estimate_base(self) -> TokenUsage | None:
        """The stated counts an estimate starts from (a parser may drop placeholders)."""
        return self.stated

    def retained_bytes(self) -> int:
        """Bytes this parser holds on to between payloads (for the constant-memory check)."""
        return 0

    # --- helpers for subclasses ------------------------------------------------------------

    def load(self, data: bytes) -> JSONMap | None:
        """Parse one payload; a JSON object or ``None`` (counted) if it is not one."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.bad_events += 1
            return None
        if not isinstance(obj, Mapping):
            return None
        return obj

    def count_text(self, data: bytes, keys: tuple[bytes, ...] | None = None) -> None:
        """Add the generated text (and tool calls) of one payload to the estimate."""
        size = self._text_size(data) if keys is None else string_value_bytes(data, keys)
        if size:
            self.text_bytes += size
            self.text_events += 1
        for marker in self.TOOL_MARKERS:
            if marker in data:
                self.tool_calls += data.count(marker)

    def reset_text(self) -> None:
        """The provider just stated the output so far: the estimate restarts from here."""
        self.text_bytes = self.text_events = self.tool_calls = 0

    def scan_model(self, data: bytes) -> None:
        """Find the model name once, by a byte scan of the stream's payloads."""
        if self.model is None and self.MODEL_KEY is not None:
            self.model = first_string_value(data, self.MODEL_KEY)

    def take_model(self, value: object) -> None:
        """Prefer a model stated in a parsed object (non-empty strings only)."""
        if isinstance(value, str) and value:
            self.model = value

    def set_final(self, usage: TokenUsage, total: int | None = None) -> None:
        self.final = usage
        self.total = total

    # --- result ----------------------------------------------------------------------------

    def extraction(
        self,
        *,
        end_of_stream: bool,
        failure: Reason | None = None,
        detail: str = "",
    ) -> Extraction:
        """The result; ``failure`` is the pipeline's reason when decoding/framing failed."""
        model = self.model or requested_model(self.ctx)
        if self.final is not None:
            return Extraction(
                usage=self.final,
                model=model,
                source=Source.REPORTED,
                reason=Reason.NONE,
                detail=detail,
                provider_total=self.total,
            )
        if self.error:
            return Extraction(
                model=model,
                reason=Reason.UPSTREAM_ERROR,
                detail=detail or "the provider sent an error instead of usage",
            )
        if failure is None and self.bad_events:
            failure = Reason.PARSE_ERROR
            detail = detail or f"{self.bad_events} payload(s) were not valid JSON"
        if failure is None:
            failure = Reason.TRUNCATED if not end_of_stream else Reason.NO_USAGE
            detail = detail or (
                "stream cut before the provider stated usage"
                if not end_of_stream
                else "the response stated no usage"
            )
        if not self.ESTIMATES:
            return Extraction(model=model, reason=failure, detail=detail)
        base = self.estimate_base()
        estimate = estimate_output_tokens(
            self.text_bytes, self.text_events, self.tool_calls, self.TOOL_CALL_TOKENS
        )
        if base is None and estimate == 0:
            # Nothing stated and no text seen: an estimate of nothing is "unknown", not 0.
            return Extraction(model=model, source=Source.ESTIMATED, reason=failure, detail=detail)
        stated = base or TokenUsage()
        usage = TokenUsage(
            input=stated.input,
            cached_input=stated.cached_input,
            cache_write=stated.cache_write,
            output=(stated.output or 0) + estimate,
            reasoning=stated.reasoning,
        )
        return Extraction(
            usage=usage, model=model, source=Source.ESTIMATED, reason=failure, detail=detail
        )
