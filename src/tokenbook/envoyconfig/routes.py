"""Provider routes and upstream clusters: `/<provider>/<path>` → that provider's upstream.

Resolution of one provider's upstream, first match wins:

1. `--upstream <provider>=URL`: `/<provider>/x` goes to `URL/x` (the prefix is replaced by the
   URL's base path, so `openai=http://h:9000/openai` sends `/openai/x` to `/openai/x`).
2. `--upstream '*=URL'`: every other provider goes to `URL/<provider>/x` (the prefix is kept),
   so one fake provider can serve all of them under distinct paths.
3. The provider's public default (`providers.py`).
4. No default (account-specific hosts): the route answers 503 with a JSON error that says which
   `--upstream` to pass, instead of guessing a host that somebody else might own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from tokenbook.envoyconfig.addresses import EVERY_PROVIDER, UpstreamUrl, parse_upstream_url
from tokenbook.envoyconfig.filters import CIRCUIT_BREAKER_LIMIT, Json, disabled_per_route
from tokenbook.envoyconfig.providers import PROVIDERS

# Debian/Ubuntu system CA bundle (package ca-certificates); also the path in the usual images.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# LLM streams last minutes: no total route timeout, but a stream silent this long is dead.
STREAM_IDLE_TIMEOUT = "300s"
NO_ROUTE_NAME = "tokenbook_no_provider"
PRIVATE_REQUEST_HEADERS = ("x-forwarded-for", "x-envoy-external-address")

_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    """One provider's resolved route. `upstream` None = not configured (503)."""

    provider: str
    upstream: UpstreamUrl | None
    prefix_rewrite: str
    example_upstream: str

    @property
    def cluster(self) -> str:
        return f"provider_{self.provider}"


def resolve_routes(upstreams: Mapping[str, str]) -> list[ProviderRoute]:
    """Apply the resolution order above to every known provider plus any extra ids given."""
    every = upstreams.get(EVERY_PROVIDER)
    known = {p.id for p in PROVIDERS}
    extra = sorted(k for k in upstreams if k != EVERY_PROVIDER and k not in known)
    examples = {p.id: p.example_upstream for p in PROVIDERS}
    defaults = {p.id: p.default_upstream for p in PROVIDERS}
    routes: list[ProviderRoute] = []
    for provider in [p.id for p in PROVIDERS] + extra:
        example = examples.get(provider, "https://<host>")
        what = f"--upstream {provider}"
        if provider in upstreams:
            url = parse_upstream_url(upstreams[provider], what)
            routes.append(ProviderRoute(provider, url, f"{url.base_path}/", example))
        elif every is not None:
            url = parse_upstream_url(every, f"--upstream {EVERY_PROVIDER}")
            routes.append(ProviderRoute(provider, url, f"{url.base_path}/{provider}/", example))
        elif (default := defaults[provider]) is not None:
            url = parse_upstream_url(default, what)
            routes.append(ProviderRoute(provider, url, f"{url.base_path}/", example))
        else:
            routes.append(ProviderRoute(provider, None, "/", example))
    return routes


def _json_error(status: int, kind: str, message: str) -> Json:
    body = json.dumps({"error": {"type": kind, "message": message}}, separators=(",", ":"))
    return {"status": status, "body": {"inline_string": body}}


def _json_content_type() -> list[Json]:
    return [
        {
            "header": {"key": "content-type", "value": "application/json"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]


def route_entry(route: ProviderRoute) -> Json:
    """The route for one provider; its `name` is the provider id the processors read."""
    match = {"prefix": f"/{route.provider}/"}
    if route.upstream is None:
        message = (
            f"tokenbook gateway: provider {route.provider!r} has no upstream configured; "
            f"render the Envoy config with --upstream {route.provider}={route.example_upstream}"
        )
        return {
            "name": route.provider,
            "match": match,
            "direct_response": _json_error(503, "tokenbook_upstream_not_configured", message),
            "response_headers_to_add": _json_content_type(),
            "typed_per_filter_config": disabled_per_route(),
        }
    return {
        "name": route.provider,
        "match": match,
        "route": {
            "cluster": route.cluster,
            "prefix_rewrite": route.prefix_rewrite,
            "host_rewrite_literal": route.upstream.authority,
            "timeout": "0s",
            "idle_timeout": STREAM_IDLE_TIMEOUT,
        },
        # The client's addresses are nothing a provider needs to know.
        "request_headers_to_remove": list(PRIVATE_REQUEST_HEADERS),
    }


def no_provider_route(provider_ids: list[str]) -> Json:
    """The last route: any path without a provider prefix gets a 404 JSON error."""
    message = (
        "tokenbook gateway: no provider route for this path; call "
        "/<provider>/<the provider's own path>, with <provider> one of " + ", ".join(provider_ids)
    )
    return {
        "name": NO_ROUTE_NAME,
        "match": {"prefix": "/"},
        "direct_response": _json_error(404, "tokenbook_unknown_provider", message),
        "response_headers_to_add": _json_content_type(),
        "typed_per_filter_config": disabled_per_route(),
    }


def _tls_socket(upstream: UpstreamUrl) -> Json:
    # Without a SAN matcher Envoy checks the chain but not that it names this host.
    san_type = "IP_ADDRESS" if upstream.is_ip else "DNS"
    tls: Json = {"@type": _TLS_TYPE}
    if not upstream.is_ip:  # SNI carries host names only
        tls["sni"] = upstream.host
    tls["common_tls_context"] = {
        "alpn_protocols": ["http/1.1"],
        "validation_context": {
            "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
            "match_typed_subject_alt_names": [
                {"san_type": san_type, "matcher": {"exact": upstream.host}}
            ],
        },
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": tls}


def provider_cluster(route: ProviderRoute) -> Json:
    """HTTP/1.1 to one provider; TLS with SNI and host-name validation for https upstreams."""
    upstream = route.upstream
    if upstream is None:
        raise ValueError(f"provider {route.provider!r} has no upstream, so no cluster")
    cluster: Json = {
        "name": route.cluster,
        # LOGICAL_DNS: one resolved address at a time, connections pooled to it; the type
        # Envoy recommends for large web services behind DNS (CDNs rotate many addresses).
        "type": "STATIC" if upstream.is_ip else "LOGICAL_DNS",
        "connect_timeout": "10s",
    }
    if not upstream.is_ip:
        # Many hosts have no IPv6 route; AUTO would try AAAA first.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    cluster.update(
        {
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _HTTP_OPTIONS_TYPE,
                    "explicit_http_config": {"http_protocol_options": {}},
                }
            },
            # HTTP/1.1: one connection per concurrent stream, and LLM streams are long.
            "circuit_breakers": {
                "thresholds": [
                    {
                        "priority": "DEFAULT",
                        "max_connections": CIRCUIT_BREAKER_LIMIT,
                        "max_pending_requests": CIRCUIT_BREAKER_LIMIT,
                        "max_requests": CIRCUIT_BREAKER_LIMIT,
                        # No retries are configured (a retried LLM call is billed twice).
                        "max_retries": 3,
                    }
                ]
            },
            "load_assignment": {
                "cluster_name": route.cluster,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": upstream.host,
                                            "port_value": upstream.port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    if upstream.tls:
        cluster["transport_socket"] = _tls_socket(upstream)
    return cluster
