"""Token usage from provider responses: detection, decoding, per-API parsers, estimates.

The meter's entry points::

    from tokenbook.usage import ResponseContext, open_adapter

    adapter = open_adapter(ResponseContext(provider="openai", path="/v1/chat/completions", ...))
    adapter.feed(chunk)                             # per response body chunk; never raises
    extraction = adapter.finish(end_of_stream=True)  # once; never raises
"""

from tokenbook.usage.detect import Api, detect_api, request_model_from_path
from tokenbook.usage.pipeline import open_adapter
from tokenbook.usage.types import (
    TOKEN_TYPES,
    Extraction,
    Reason,
    ResponseContext,
    Source,
    TokenUsage,
    UsageAdapter,
)

__all__ = [
    "TOKEN_TYPES",
    "Api",
    "Extraction",
    "Reason",
    "ResponseContext",
    "Source",
    "TokenUsage",
    "UsageAdapter",
    "detect_api",
    "open_adapter",
    "request_model_from_path",
]
