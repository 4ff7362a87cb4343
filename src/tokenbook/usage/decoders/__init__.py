"""Incremental body decoders: every one is ``decode(chunk) -> list`` plus ``flush() -> list``.

Two layers, used in this order on a response body:

1. `make_content_decoder` undoes ``Content-Encoding`` (gzip, deflate, br, zstd, chains).
2. A framing decoder cuts the decoded bytes into messages:

   ==========================================  ======================  ====================
   Content-Type                                decoder                 yields
   ==========================================  ======================  ====================
   ``text/event-stream``                       `SSEDecoder`            `SSEEvent`
   ``application/x-ndjson``,
   ``application/stream+json``                 `NDJSONDecoder`         line ``bytes``
   ``application/json`` (Gemini/Vertex stream  `JSONArrayDecoder`      element ``bytes``
   without ``alt=sse``)
   ``application/vnd.amazon.eventstream``      `EventStreamDecoder`    `EventStreamMessage`
   ==========================================  ======================  ====================

Any chunk boundaries give the same result as the whole body at once; memory stays bounded by
each decoder's size limit; all failures are `DecodeError` (see `errors`).
"""

from tokenbook.usage.decoders.content import (
    ContentDecoder,
    make_content_decoder,
)
from tokenbook.usage.decoders.errors import DecodeError
from tokenbook.usage.decoders.eventstream import (
    EventStreamDecoder,
    EventStreamMessage,
    decode_chunk_bytes,
)
from tokenbook.usage.decoders.jsonarray import JSONArrayDecoder
from tokenbook.usage.decoders.ndjson import NDJSONDecoder
from tokenbook.usage.decoders.sse import SSEDecoder, SSEEvent

__all__ = [
    "ContentDecoder",
    "DecodeError",
    "EventStreamDecoder",
    "EventStreamMessage",
    "JSONArrayDecoder",
    "NDJSONDecoder",
    "SSEDecoder",
    "SSEEvent",
    "decode_chunk_bytes",
    "make_content_decoder",
]
