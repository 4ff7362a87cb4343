"""Request-body rewrite: make every OpenAI-style stream report its usage; and the model of the
requests whose responses do not name it.

OpenAI (and Azure OpenAI) send a usage chunk at the end of a Chat Completions / Completions
stream only when the request says ``"stream_options": {"include_usage": true}``. Without it the
stream carries no usage at all, and tokenbook could only estimate. So for those routes the gate
buffers the request body (``mode_override``; JSON bodies are small) and adds the option when a
streaming request lacks it. Clients that parse the extra final chunk are the norm: the official
SDKs expose it as ``chunk.usage`` on a chunk with empty ``choices``.

Only providers documented to accept the option are rewritten (others reject unknown fields or
report usage on their own); operators can change the set in the config.

Cohere's responses name no model (chat v1 and v2, embed), nor do their URLs: without the
request's ``model`` their usage could not be priced. For those the gate buffers the body too,
only to read the model (`MODEL_IN_BODY`); it never rewrites them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import orjson

#: Providers whose Chat Completions streams carry usage only with include_usage.
DEFAULT_INCLUDE_USAGE_PROVIDERS: frozenset[str] = frozenset({"openai", "azure_openai"})
#: Bodies larger than this are forwarded untouched (Envoy buffers them whole for the rewrite).
MAX_REWRITE_BYTES = 8 * 1024 * 1024

_STREAM_PATHS = ("/chat/completions", "/completions")
#: provider -> the API paths (suffixes) whose model is only in the request body.
MODEL_IN_BODY: dict[str, tuple[str, ...]] = {"cohere": ("/chat", "/embed")}


#: What the gate asks for a request's body for (`body_use`).
INCLUDE_USAGE = "include_usage"  # possibly add stream_options.include_usage (`rewrite_for_usage`)
READ_MODEL = "read_model"  # only read its model, never change it (`read_model`)


def body_use(
    provider: str | None,
    method: str,
    provider_path: str,
    content_length: str | None,
    providers: Collection[str],
) -> str | None:
    """Why the gate should ask Envoy for this request's body, if it should: `INCLUDE_USAGE`
    for the streaming APIs of ``providers``, `READ_MODEL` where nothing else names the model
    (`MODEL_IN_BODY`). Decided once, with the path, so a body is never rewritten for an API
    that only had its model read."""
    if provider is None or method != "POST":
        return None
    path = provider_path.rstrip("/")
    if provider in providers and path.endswith(_STREAM_PATHS):
        use = INCLUDE_USAGE
    elif path.endswith(MODEL_IN_BODY.get(provider, ())):
        use = READ_MODEL
    else:
        return None
    if content_length is not None:
        try:
            if int(content_length) > MAX_REWRITE_BYTES:
                return None
        except ValueError:
            return None
    return use


def wants_body(
    provider: str | None,
    method: str,
    provider_path: str,
    content_length: str | None,
    providers: Collection[str],
) -> bool:
    """Should the gate ask Envoy for this request's body (`body_use`, for any reason)?"""
    return body_use(provider, method, provider_path, content_length, providers) is not None


def handle_body(body: bytes, use: str) -> BodyRewrite:
    """What the gate does with a body it asked for: `rewrite_for_usage` or `read_model`."""
    return rewrite_for_usage(body) if use == INCLUDE_USAGE else read_model(body)


@dataclass(frozen=True, slots=True)
class BodyRewrite:
    body: bytes | None  # the new body, or None to leave it unchanged
    request_model: str | None  # the `model` the request asked for (the label's fallback)
    stream: bool


def rewrite_for_usage(body: bytes) -> BodyRewrite:
    """Add ``stream_options.include_usage`` to a streaming request that lacks it.

    A body that is not a JSON object is left alone (the provider will answer it with its own
    error); so is one that already sets ``include_usage`` either way, since the client's explicit
    choice wins.
    """
    if len(body) > MAX_REWRITE_BYTES or b'"stream"' not in body:
        return BodyRewrite(None, _model_of(body), False)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return BodyRewrite(None, None, False)
    if not isinstance(doc, dict):
        return BodyRewrite(None, None, False)
    model = doc.get("model") if isinstance(doc.get("model"), str) else None
    if doc.get("stream") is not True:
        return BodyRewrite(None, model, False)
    options = doc.get("stream_options")
    if options is None:
        doc["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict) and "include_usage" not in options:
        options["include_usage"] = True
    else:
        return BodyRewrite(None, model, True)
    return BodyRewrite(orjson.dumps(doc), model, True)


def read_model(body: bytes) -> BodyRewrite:
    """The body left as it is, with the ``model`` it asks for (`MODEL_IN_BODY` requests)."""
    return BodyRewrite(None, _model_of(body), False)


def _model_of(body: bytes) -> str | None:
    if len(body) > MAX_REWRITE_BYTES or b'"model"' not in body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None
