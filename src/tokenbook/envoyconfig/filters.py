"""The two ext_proc filters (gate, meter) and the cluster they share, as Envoy config dicts.

Every choice here answers a measured trap in `ENVOY-NOTES.md` (Envoy 1.40); the comments say
which. The dicts are plain data for the YAML renderer: this module imports no Envoy types.
"""

from __future__ import annotations

from collections.abc import Mapping

from tokenbook.envoyconfig.addresses import HostPort, PipePath

EXTPROC_CLUSTER = "tokenbook_extproc"
GATE_FILTER = "tokenbook.gate"
METER_FILTER = "tokenbook.meter"
# Dynamic metadata namespace: the gate writes attribution here, the meter and access log read it.
METADATA_NAMESPACE = "tokenbook"
# gRPC initial metadata telling `tokenbook serve` which processor a stream is for.
FILTER_ROLE_HEADER = "x-tokenbook-filter"
# The processor reads the provider from the route name, never from a client header.
REQUEST_ATTRIBUTES = ("xds.route_name", "request.id")
METER_ATTRIBUTES = (
    "xds.route_name",
    "request.id",
    "request.path",
    "request.method",
    "request.time",
    "response.code_details",
)
# Headers the gate may set or remove. On the request it replaces client credentials
# (authorization, x-api-key, api-key, x-goog-api-key), injects the attribution headers, may
# strip a `key=` query parameter (:path) and may rewrite a buffered body, and then it must set
# content-length (measured: a mismatch is a 500, details
# `mismatch_between_content_length_and_the_length_of_the_mutated_body`). Its immediate
# responses (401/403/429 in the provider's error shape) are checked against the same rules
# (measured: a refused content-type left the 401 as text/plain), so their headers are listed
# too. Anything else is refused with an error (disallow_is_error): a processor bug is a
# visible 500, never a silently ignored mutation that leaks a key upstream.
# Envoy refuses a regex whose RE2 program is larger than 100 (the default
# `re2.max_program_size.error_level`, measured), hence the short patterns.
GATE_MUTABLE_HEADERS = "|".join(
    (
        "x-tokenbook-.*",
        ".*api-key",
        "authorization",
        ":path",
        "content-.*",
        "retry-after",
        "www-authenticate",
        "x-should-retry",
    )
)
# Each HTTP request opens one gRPC stream per filter and the meter's streams outlive the
# response a little; Envoy's default breakers (1024) overflowed under load (ENVOY-NOTES).
CIRCUIT_BREAKER_LIMIT = 100_000

Json = dict[str, object]

_EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

GATE_MODE: Mapping[str, str] = {
    "request_header_mode": "SEND",
    "response_header_mode": "SKIP",
    "request_body_mode": "NONE",
    "response_body_mode": "NONE",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}
METER_MODE: Mapping[str, str] = {
    "request_header_mode": "SKIP",
    "response_header_mode": "SEND",
    "request_body_mode": "NONE",
    "response_body_mode": "STREAMED",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}


def duration(ms: int) -> str:
    """Milliseconds as a protobuf JSON Duration ("1s", "0.250s")."""
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms / 1000:.3f}s"


def _grpc_service(role: str) -> Json:
    # No `timeout`: it would bound the whole stream, and a metered LLM stream can last minutes.
    return {
        "envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
        "initial_metadata": [{"key": FILTER_ROLE_HEADER, "value": role}],
    }


def gate_filter(*, failure_mode_allow: bool, message_timeout_ms: int) -> Json:
    """The in-path filter: request headers only, fails closed by default."""
    buffered = {**GATE_MODE, "request_body_mode": "BUFFERED"}
    return {
        "name": GATE_FILTER,
        "typed_config": {
            "@type": _EXT_PROC_TYPE,
            "grpc_service": _grpc_service("gate"),
            "stat_prefix": "tokenbook_gate",
            "failure_mode_allow": failure_mode_allow,
            "message_timeout": duration(message_timeout_ms),
            "processing_mode": dict(GATE_MODE),
            # The gate may ask for the request body on routes where it must rewrite it.
            # Envoy compares an override with these entries after filling the override's unset
            # fields from the configured mode, so every entry spells out every field.
            "allow_mode_override": True,
            "allowed_override_modes": [dict(GATE_MODE), buffered],
            "request_attributes": list(REQUEST_ATTRIBUTES),
            # Lets the gate's dynamic_metadata land in Envoy, where the meter and the access
            # log read it.
            "metadata_options": {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
            "mutation_rules": {
                "disallow_all": True,
                "allow_expression": {"regex": GATE_MUTABLE_HEADERS},
                "disallow_is_error": True,
            },
            # The provider is the route the gate saw; a header mutation must not re-route.
            "route_cache_action": "RETAIN",
        },
    }


def meter_filter(*, failure_mode_allow: bool, message_timeout_ms: int) -> Json:
    """The observing filter: never in the user's latency, fails open by default."""
    return {
        "name": METER_FILTER,
        "typed_config": {
            "@type": _EXT_PROC_TYPE,
            "grpc_service": _grpc_service("meter"),
            "stat_prefix": "tokenbook_meter",
            # Observability mode has no backpressure: a lagging processor gets CANCELLED
            # streams, and with failure_mode_allow false those became client 500s (measured).
            "observability_mode": True,
            "failure_mode_allow": failure_mode_allow,
            "message_timeout": duration(message_timeout_ms),
            "processing_mode": dict(METER_MODE),
            "response_attributes": list(METER_ATTRIBUTES),
            # The gate's attribution arrives on every message to the meter.
            "metadata_options": {"forwarding_namespaces": {"untyped": [METADATA_NAMESPACE]}},
            # The processor ends each RPC right after the end-of-stream body (or the provider's
            # terminal event, where Envoy sends no end of stream); this only bounds
            # how long Envoy keeps a stream the processor did not end (default 5 s, which let
            # the circuit breaker overflow). Long enough for a processor that lags a little.
            "deferred_close_timeout": "2s",
            # Observability answers are ignored anyway; refuse mutations for good measure.
            "mutation_rules": {"disallow_all": True},
        },
    }


def disabled_per_route() -> Json:
    """typed_per_filter_config that opens no ext_proc stream on a route (404 and 503 routes)."""
    off = {"@type": _PER_ROUTE_TYPE, "disabled": True}
    return {GATE_FILTER: dict(off), METER_FILTER: dict(off)}


def _address(endpoint: HostPort | PipePath) -> Json:
    if isinstance(endpoint, PipePath):
        return {"pipe": {"path": endpoint.path}}
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}


def extproc_cluster(endpoints: list[HostPort | PipePath]) -> Json:
    """`tokenbook_extproc`: HTTP/2 (gRPC) to `tokenbook serve`, STATIC for IPs and pipes."""
    static = all(isinstance(e, PipePath) or e.is_ip for e in endpoints)
    cluster: Json = {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "1s",
    }
    if not static:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if len(endpoints) > 1:
        # `serve --workers N`: one endpoint per worker. Streams differ in length (a gate call
        # vs. a minutes-long meter stream), so balance open streams, not stream counts.
        cluster["lb_policy"] = "LEAST_REQUEST"
    cluster.update(
        {
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _HTTP_OPTIONS_TYPE,
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "circuit_breakers": {
                "thresholds": [
                    {
                        "priority": "DEFAULT",
                        "max_connections": CIRCUIT_BREAKER_LIMIT,
                        "max_pending_requests": CIRCUIT_BREAKER_LIMIT,
                        "max_requests": CIRCUIT_BREAKER_LIMIT,
                        "max_retries": 3,
                    }
                ]
            },
            "load_assignment": {
                "cluster_name": EXTPROC_CLUSTER,
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": _address(e)}} for e in endpoints]}
                ],
            },
        }
    )
    return cluster
