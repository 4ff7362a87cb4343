"""Header rules of the gate (DESIGN.md "Keys and the registry", "Attribution headers"). Pure.

Headers are ``Sequence[tuple[str, str]]`` with lower-case names, as Envoy hands them over (names
are compared case-insensitively anyway, so callers with mixed-case names get the same answers).
Queries are the raw query string without the ``?``.

Where a caller's key comes from, in this order (the first present one wins)::

    authorization: Bearer <key>     OpenAI and most OpenAI-compatible APIs, Bedrock API keys
    x-api-key: <key>                Anthropic
    api-key: <key>                  Azure OpenAI
    x-goog-api-key: <key>           Gemini
    ?key=<key>                      Gemini (query parameter)
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote_plus

from tokenbook.attribution.keys import fingerprint
from tokenbook.attribution.model import NO_KEY_ID, UNATTRIBUTED, KeyRecord, Unattributed

__all__ = [
    "ATTRIBUTION_PREFIX",
    "KEY_ID_HEADER",
    "QUERY",
    "UNATTRIBUTED",  # re-exported: the gate's whole vocabulary in one module
    "UnsupportedCredential",
    "attribution_headers",
    "client_attribution_headers",
    "credential_header",
    "find_key",
    "headers_carrying",
    "key_headers_to_remove",
    "remove_query_key",
    "unattributed",
]

ATTRIBUTION_PREFIX = "x-tokenbook-"
KEY_ID_HEADER = f"{ATTRIBUTION_PREFIX}key-id"

#: ``where`` value of a key found in the ``key`` query parameter.
QUERY = "query"
_QUERY_PARAM = "key"

_AUTHORIZATION = "authorization"
_KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")
_WANTED = frozenset((_AUTHORIZATION, *_KEY_HEADERS))

# Provider id -> (header, value template) for setting the upstream credential. Every provider
# not listed takes an OpenAI-style bearer token.
_CREDENTIAL_HEADERS: dict[str, tuple[str, str]] = {
    "anthropic": ("x-api-key", "{}"),
    "gemini": ("x-goog-api-key", "{}"),
    "azure_openai": ("api-key", "{}"),
}
# Providers whose requests are signed per request (AWS SigV4 over the body): a static header
# cannot authenticate them, so the existing gateway (or the SDK) must sign.
_SIGNED_PROVIDERS = frozenset({"bedrock"})


class UnsupportedCredential(ValueError):
    """tokenbook cannot set a credential for this provider (configuration error)."""


def find_key(headers: Sequence[tuple[str, str]], query: str) -> tuple[str, str] | None:
    """``(key, where)`` of the caller's key, or None. ``where`` is the header name or `QUERY`.

    An ``authorization`` header with another scheme (Basic, AWS4-HMAC-SHA256 …) is not a key and
    the search goes on.
    """
    found: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _WANTED and lname not in found:
            found[lname] = value
    auth = found.get(_AUTHORIZATION)
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token, _AUTHORIZATION
    for name in _KEY_HEADERS:
        value = found.get(name, "").strip()
        if value:
            return value, name
    if query:
        for name, value in parse_qsl(query.removeprefix("?")):
            if name == _QUERY_PARAM and value.strip():
                return value.strip(), QUERY
    return None


def key_headers_to_remove(where: str) -> list[str]:
    """Headers to remove so the tokenbook key found at ``where`` does not travel upstream.

    For `QUERY` there is no header: rewrite the path with `remove_query_key`.
    """
    return [] if where == QUERY else [where]


def headers_carrying(headers: Sequence[tuple[str, str]], key: str) -> list[str]:
    """Every key-bearing header whose value holds ``key`` (lower-case names, no duplicates).

    A client may send its tokenbook key twice (say ``authorization`` and ``x-api-key``);
    removing only the one `find_key` chose would leak the other to the provider.
    """
    names: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname in _WANTED and key in value and lname not in names:
            names.append(lname)
    return names


def remove_query_key(query: str) -> str:
    """The raw query without any ``key`` parameter; other parameters stay byte for byte."""
    parts = [p for p in query.removeprefix("?").split("&") if p]
    kept = [p for p in parts if unquote_plus(p.partition("=")[0]) != _QUERY_PARAM]
    return "&".join(kept)


def attribution_headers(subject: KeyRecord | Unattributed) -> list[tuple[str, str]]:
    """The trusted ``x-tokenbook-*`` headers for the upstream request.

    Values are safe as header values by construction: attribution names are validated at
    issuance, key ids are base32 or a hex fingerprint.
    """
    headers = [(KEY_ID_HEADER, subject.key_id)]
    headers.extend(
        (f"{ATTRIBUTION_PREFIX}{name}", value) for name, value in subject.attribution.items()
    )
    return headers


def client_attribution_headers(headers: Sequence[tuple[str, str]]) -> list[str]:
    """Lower-case names of client-sent ``x-tokenbook-*`` headers (any case), to remove before
    the trusted ones are set: a client must never choose its own attribution."""
    names: list[str] = []
    for name, _ in headers:
        lname = name.lower()
        if lname.startswith(ATTRIBUTION_PREFIX) and lname not in names:
            names.append(lname)
    return names


def credential_header(provider: str, credential: str) -> tuple[str, str]:
    """The header that carries ``credential`` to ``provider``'s API.

    ``anthropic``: ``x-api-key``; ``gemini``: ``x-goog-api-key``; ``azure_openai``: ``api-key``;
    every other provider (OpenAI and the OpenAI-compatible ones, Vertex AI access tokens, …):
    ``authorization: Bearer``. ``bedrock`` raises `UnsupportedCredential`: its requests are
    SigV4-signed per request, which is the job of the operator's gateway or of the SDK.
    """
    if provider in _SIGNED_PROVIDERS:
        raise UnsupportedCredential(
            f"{provider} requests are signed with AWS SigV4 per request, so tokenbook cannot set"
            " a static credential: let the existing gateway or the SDK sign, and remove"
            f" upstream_credential_ref from {provider} keys/routes"
        )
    if not credential or not credential.isprintable():
        raise UnsupportedCredential(
            f"the credential for {provider} is empty or contains control characters"
        )
    name, template = _CREDENTIAL_HEADERS.get(provider, (_AUTHORIZATION, "Bearer {}"))
    return name, template.format(credential)


def unattributed(key: str | None) -> Unattributed:
    """The subject for a request whose key the registry does not know (``allow`` policy)."""
    return Unattributed(fingerprint(key) if key else NO_KEY_ID)
