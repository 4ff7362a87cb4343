"""Plain value types shared by the usage extractors, the meter and the booking code.

Nothing here knows about Envoy, gRPC or protobuf: the meter translates Envoy messages into
these values (`ResponseContext`, body chunks as ``bytes``) and gets an `Extraction` back.

The adapter contract, which every provider module implements::

    adapter = open_adapter(ctx)          # chosen from provider + path + response headers
    adapter.feed(chunk)                  # 0..n times, any chunk boundaries, never raises
    result = adapter.finish(end_of_stream=True)   # exactly once; never raises

`feed` must keep constant memory for streams (only the unfinished tail of a frame/line is kept),
and must never raise: a malformed body is reported by `finish` through `Extraction.reason`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

#: DESIGN.md's disjoint token types; they add up to what the provider bills.
TOKEN_TYPES: tuple[str, ...] = ("input", "cached_input", "cache_write", "output", "reasoning")


def _add(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Disjoint token counts. ``None`` means the provider did not state it (unknown, not 0)."""

    input: int | None = None
    cached_input: int | None = None
    cache_write: int | None = None
    output: int | None = None
    reasoning: int | None = None

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input=_add(self.input, other.input),
            cached_input=_add(self.cached_input, other.cached_input),
            cache_write=_add(self.cache_write, other.cache_write),
            output=_add(self.output, other.output),
            reasoning=_add(self.reasoning, other.reasoning),
        )

    def items(self) -> Iterator[tuple[str, int]]:
        """(token_type, count) for every stated count, in `TOKEN_TYPES` order."""
        for name in TOKEN_TYPES:
            value: int | None = getattr(self, name)
            if value is not None:
                yield name, value

    def total(self) -> int:
        """Sum over the stated token types (the billed total where the provider states all)."""
        return sum(v for _, v in self.items())

    def is_empty(self) -> bool:
        """True when the provider stated no count at all."""
        return all(getattr(self, n) is None for n in TOKEN_TYPES)


class Source(StrEnum):
    """Where booked numbers came from; estimated and reported tokens are never mixed up."""

    REPORTED = "reported"
    ESTIMATED = "estimated"


class Reason(StrEnum):
    """Why an extraction holds no (complete) provider-reported usage."""

    NONE = ""  # provider-reported usage was found
    NO_USAGE = "no_usage"  # the body parsed but stated no usage (e.g. stream without include_usage)
    PARSE_ERROR = "parse_error"  # malformed JSON / SSE / frames
    TOO_LARGE = "too_large"  # a buffered JSON body exceeded the cap
    TRUNCATED = "truncated"  # the stream ended (or was cut) before the usage-bearing event
    UPSTREAM_ERROR = "upstream_error"  # an error body (4xx/5xx or an error event)
    UNSUPPORTED = "unsupported"  # no adapter for this provider/API or content type
    NOT_BILLED = "not_billed"  # e.g. count_tokens: a number that is an estimate, not consumption


@dataclass(frozen=True, slots=True)
class Extraction:
    """What an adapter could tell about one response, at `finish`."""

    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str | None = None  # the model the provider reports having served
    source: Source = Source.REPORTED
    reason: Reason = Reason.NONE
    detail: str = ""  # a short human-readable explanation for logs (never body content)
    provider_total: int | None = None  # the total the provider states, where it states one


# The response headers adapters read (`ResponseContext.response_headers` holds only these): the
# meter decodes no others, since a provider's response carries twenty or so (rate limits,
# cookies, tracing) and decoding each costs about a microsecond. A test checks that every
# header name the usage package reads is covered.
USED_RESPONSE_HEADERS = frozenset({"content-type", "content-encoding"})
USED_RESPONSE_HEADER_PREFIXES = ("x-amzn-bedrock-",)  # Bedrock's token-count headers


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """Everything an adapter may use to choose and configure itself. Plain values only."""

    provider: str  # route provider id (DESIGN.md), never client-chosen
    path: str  # the provider's own path, route prefix already removed, without the query
    query: str = ""  # raw query string without '?'
    status: int = 200
    request_headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    # lower-case names; from the meter, only `USED_RESPONSE_HEADERS` and its prefixes
    response_headers: Mapping[str, str] = field(default_factory=dict)
    request_model: str | None = None  # from the request body or URL, if known
    max_json_bytes: int = 4 * 1024 * 1024  # cap for buffering a non-streamed JSON body

    @property
    def content_type(self) -> str:
        return self.response_headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def content_encoding(self) -> str:
        return self.response_headers.get("content-encoding", "").strip().lower()


class UsageAdapter(Protocol):
    """Incremental usage extractor for one response body."""

    def feed(self, chunk: bytes) -> None:
        """Take the next body bytes (any boundary). Never raises."""

    def finish(self, *, end_of_stream: bool) -> Extraction:
        """Report what was found. ``end_of_stream=False`` means the stream was cut."""

    @property
    def complete(self) -> bool:
        """The body has shown its provider's terminal event: nothing after it can change the
        result, so the caller may finish now rather than wait for the end of the stream."""
