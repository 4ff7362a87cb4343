"""Envoy configs for the bench: the fake upstream Envoy and the gateway of each setup.

The gateway is what `tokenbook envoy-config` renders (the shipped filters, cluster and routes),
with three changes that keep the comparison about ext_proc:

- the access log is dropped (identical in every setup, it only adds Envoy CPU);
- requests carrying ``x-bench-upstream: stream`` go to the Python streaming upstream, on a route
  that is also named ``openai`` so the processors treat it as the OpenAI route it stands for;
- the *plain* setup has no ext_proc filter at all.

The fake upstream is a second Envoy answering with `direct_response` (a JSON body, or an SSE body
with ``x-bench-upstream: sse``). It has a buffer filter so that it reads the POST body before
answering: without it the gateway's upstream connection is reset after every request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tokenbook.envoyconfig.render import EnvoyConfigOptions, render_bootstrap

JSON_FIXTURE = "openai/chat/nonstream_prompt_cache_hit.json"
UPSTREAM_HEADER = "x-bench-upstream"
_HCM = "envoy.filters.network.http_connection_manager"
_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_LIMIT = 100_000

Json = dict[str, Any]


def _listener(name: str, port: int, hcm: Json) -> Json:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": _HCM, "typed_config": hcm}]}],
    }


def _direct(body: bytes, content_type: str) -> Json:
    return {
        "direct_response": {"status": 200, "body": {"inline_string": body.decode()}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": content_type},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def upstream_config(port: int, admin_port: int, json_body: bytes, sse_body: bytes) -> Json:
    """The direct_response upstream: JSON by default, SSE with ``x-bench-upstream: sse``."""
    sse_match = {"name": UPSTREAM_HEADER, "string_match": {"exact": "sse"}}
    hcm: Json = {
        "@type": _HCM_TYPE,
        "stat_prefix": "bench_upstream",
        "codec_type": "AUTO",
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": _BUFFER_TYPE, "max_request_bytes": 1 << 20},
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}},
        ],
        "route_config": {
            "name": "bench_upstream",
            # The default cap (4 KiB) is below the SSE body.
            "max_direct_response_body_size_bytes": 1 << 20,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/", "headers": [sse_match]},
                            **_direct(sse_body, "text/event-stream; charset=utf-8"),
                        },
                        {"match": {"prefix": "/"}, **_direct(json_body, "application/json")},
                    ],
                }
            ],
        },
    }
    return {
        "admin": _admin(admin_port),
        "static_resources": {"listeners": [_listener("upstream", port, hcm)]},
    }


def _admin(port: int) -> Json:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def _stream_cluster(port: int) -> Json:
    return {
        "name": "bench_stream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": _LIMIT,
                    "max_pending_requests": _LIMIT,
                    "max_requests": _LIMIT,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": "bench_stream",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def gateway_config(
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    stream_port: int,
    extproc: str | None,
    options: dict[str, Any] | None = None,
) -> Json:
    """A gateway bootstrap; `extproc` None = plain Envoy, else the processor's HOST:PORT.

    `options` are further `EnvoyConfigOptions` fields (e.g. ``workers``) where they exist.
    """
    opts = EnvoyConfigOptions(
        listen=f"127.0.0.1:{listen_port}",
        tokenbook=extproc or "127.0.0.1:1",
        admin_port=admin_port,
        upstreams={"openai": f"http://127.0.0.1:{upstream_port}"},
        **(options or {}),
    )
    doc: Json = render_bootstrap(opts)
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    if extproc is None:
        hcm["http_filters"] = [
            f for f in hcm["http_filters"] if "ext_proc" not in f["typed_config"]["@type"]
        ]
        doc["static_resources"]["clusters"] = [
            c for c in doc["static_resources"]["clusters"] if c["name"] != "tokenbook_extproc"
        ]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    openai = next(r for r in routes if r.get("name") == "openai")
    route: Json = {**openai["route"], "cluster": "bench_stream"}
    route.pop("host_rewrite_literal", None)
    stream_route: Json = {
        "name": "openai",
        "match": {
            "prefix": "/openai/",
            "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": "stream"}}],
        },
        "route": route,
    }
    routes.insert(routes.index(openai), stream_route)
    doc["static_resources"]["clusters"].append(_stream_cluster(stream_port))
    return doc


def write_yaml(path: Path, doc: Json) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=4096), encoding="utf-8")
    return path
