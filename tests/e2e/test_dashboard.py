"""The Grafana dashboard and the Prometheus rules, against a real Prometheus and a real tokenbook.

A stack of our own (redis-server, `tokenbook serve --unknown-keys allow`, Envoy, the fake provider)
serves SDK traffic in two rounds: cached input (OpenAI), cache writes and reads (Anthropic), a
reasoning stream, and a key the registry does not know (unattributed). Debian's `prometheus`
scrapes it every second with the shipped rule files loaded. Then every PromQL expression of the
dashboard (each panel target, each template variable query) is evaluated through the HTTP API
with the template variables set to All: each must succeed and return at least one series with a
finite value. The same Prometheus shows that every shipped rule evaluates without error, that the
recording rules produce series from tokenbook's real metrics, and that the unattributed request
fires TokenbookUnattributedSpend with its key fingerprint.

Two rounds, because Prometheus does not count a counter's first sample as an increase: only the
second round makes `rate()` and `increase()` non-zero.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.e2e.conftest import issue_key
from tokenbook.attribution.keys import fingerprint
from tokenbook.testing.stack import ManagedProcess, Stack, free_port, http_get, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "tokenbook.json"
DOC = REPO / "docs" / "dashboard.md"
PROM_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS = Path("/usr/bin/prometheus")

#: What Grafana would put in for its own variables, at a 1 s scrape interval.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}
ATTRIBUTION_VARIABLES = ("team", "workload", "agent", "model")
UNKNOWN_KEY = "sk-not-known-to-tokenbook-0123456789"
#: Requests booked per round (see `send_round`).
PER_ROUND = 4
#: Recording rules that need hours of history before they have a value.
NEEDS_HISTORY = re.compile(r"_history:6h$")


# --- the dashboard's expressions ---------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    where: str  # panel title and refId, or variable name
    expr: str  # as written in the dashboard


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_expressions(dashboard: dict[str, Any]) -> list[Expression]:
    return [
        Expression(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


LABEL_VALUES = re.compile(
    r"^\s*label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S
)


def variable_expressions(dashboard: dict[str, Any]) -> list[Expression]:
    """Each query variable's `label_values(selector, label)` as the PromQL that answers it."""
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = LABEL_VALUES.match(query)
        assert m, f"variable {var['name']}: not a label_values(selector, label) query: {query}"
        out.append(
            Expression(f"variable {var['name']}", f"count by ({m['label']}) ({m['selector']})")
        )
    return out


def substitute(expr: str) -> str:
    """Grafana's interpolation with every attribution variable at All (`.*`)."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_VARIABLES:
            return GRAFANA_VARIABLES[name]
        if name in ATTRIBUTION_VARIABLES:
            return ".*"
        raise AssertionError(f"unknown dashboard variable ${name} in {expr}")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


# --- a real Prometheus -------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on a free port, temp-dir storage, the shipped config and rules."""

    def __init__(self, workdir: Path, target: str) -> None:
        if not PROMETHEUS.exists():
            pytest.fail(
                f"{PROMETHEUS} not found: run `make system-deps` (Debian package `prometheus`)"
            )
        self.port = free_port()
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str((PROM_DIR / f).resolve()) for f in config["rule_files"]]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tokenbook"]
        job["static_configs"] = [{"targets": [target]}]
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.process = ManagedProcess(
            "prometheus",
            [
                str(PROMETHEUS),
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            workdir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.process.start()
        self.process.wait_ready(lambda: http_get(f"{self.url}/-/ready")[0] == 200, 30)
        return self

    def stop(self) -> None:
        self.process.stop()

    def api(self, path: str, **params: str) -> Any:
        data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/{path}", data=data if params else None)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with the reason
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    wait_until(check, timeout, what)


# --- traffic -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    openai: str
    anthropic: str
    reasoning: str


def send_round(stack: Stack, keys: Keys) -> None:
    """PER_ROUND requests through Envoy with the official SDKs (as in tests/e2e/test_gateway.py)."""
    oa = openai.OpenAI(base_url=f"{stack.gateway}/openai/v1", api_key=keys.openai, max_retries=0)
    oa.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-fixture": "openai/chat/nonstream_prompt_cache_hit.json"},
    )
    ant = anthropic.Anthropic(
        base_url=f"{stack.gateway}/anthropic", api_key=keys.anthropic, max_retries=0
    )
    ant.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-fixture": "anthropic/messages/nonstream_cache_write_and_read.json"},
    )
    stream = openai.OpenAI(
        base_url=f"{stack.gateway}/openai/v1", api_key=keys.reasoning, max_retries=0
    ).chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-fixture": "openai/chat/stream_include_usage_reasoning.sse"},
    )
    assert list(stream)
    # admitted because the stack runs with --unknown-keys allow: booked as unattributed
    unknown = openai.OpenAI(
        base_url=f"{stack.gateway}/openai/v1", api_key=UNKNOWN_KEY, max_retries=0
    )
    unknown.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-fixture": "openai/chat/nonstream_prompt_cache_hit.json"},
    )


def wait_for_requests(prom: Prometheus, count: int) -> None:
    """Until Prometheus has scraped `count` booked requests (the meter books asynchronously)."""
    wait_for(
        lambda: prom.value("sum(tokenbook_requests_total)") == count, f"{count} requests scraped"
    )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[Prometheus]:
    work = tmp_path_factory.mktemp("dashboard")
    stack = Stack(workdir=work, corpus=corpus_dir, serve_args=["--unknown-keys", "allow"])
    prom: Prometheus | None = None
    try:
        stack.start()
        keys = Keys(
            openai=issue_key(stack, "alice", "search", "crawler", "indexing")["key"],
            anthropic=issue_key(stack, "carol", "research", "summariser", "papers")["key"],
            reasoning=issue_key(stack, "bob", "support", "helper", "tickets")["key"],
        )
        prom = Prometheus(work, f"127.0.0.1:{stack.metrics_port}").start()
        for round_ in (1, 2):
            send_round(stack, keys)
            wait_for_requests(prom, round_ * PER_ROUND)
        # one more scrape and rule evaluation after the last increase
        time.sleep(1.5)
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        stack.stop()


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_every_dashboard_expression_returns_data(prometheus: Prometheus) -> None:
    dashboard = load_dashboard()
    expressions = variable_expressions(dashboard) + panel_expressions(dashboard)
    assert len(expressions) >= 20
    failures = []
    print(f"\n{len(expressions)} dashboard expressions against {prometheus.url}:")
    for e in expressions:
        expr = substitute(e.expr)
        try:
            result = prometheus.query(expr)
        except AssertionError as exc:
            failures.append(f"{e.where}: {exc}")
            print(f"  ERROR {e.where}: {exc}")
            continue
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        print(f"  {len(result):3d} series ({len(finite)} finite)  {e.where}")
        if not finite:
            failures.append(f"{e.where}: {len(result)} series, none with a finite value:\n{expr}")
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(60)
def test_variables_list_the_traffic(prometheus: Prometheus) -> None:
    dashboard = load_dashboard()
    values = {
        e.where.split()[-1]: {
            next(iter(r["metric"].values())) for r in prometheus.query(substitute(e.expr))
        }
        for e in variable_expressions(dashboard)
    }
    print(f"\nvariable values: {values}")
    assert {"search", "research", "support", "unattributed"} <= values["team"]
    assert {"crawler", "summariser", "helper", "unattributed"} <= values["agent"]
    assert {"indexing", "papers", "tickets"} <= values["workload"]
    assert any(m.startswith("claude-sonnet-4-5") for m in values["model"]), values["model"]


@pytest.mark.timeout(60)
def test_every_rule_evaluates_against_real_metrics(prometheus: Prometheus) -> None:
    def all_evaluated() -> bool:
        groups = prometheus.api("rules")["groups"]
        return all(r["health"] != "unknown" for g in groups for r in g["rules"])

    wait_for(all_evaluated, "every rule evaluated once")
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 30
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, "\n".join(broken)

    print("\nrecording rules:")
    empty = []
    for rule in (r for r in rules if r["type"] == "recording"):
        n = len(prometheus.query(rule["name"]))
        print(f"  {n:3d} series  {rule['name']}")
        if n == 0 and not NEEDS_HISTORY.search(rule["name"]):
            empty.append(rule["name"])
    assert not empty, f"recording rules without series from tokenbook's metrics: {empty}"
    # the per-key level carries the attribution of the issued keys
    crawler = prometheus.query('tokenbook:spend_usd_per_hour:rate1h{agent="crawler"}')
    assert crawler
    assert crawler[0]["metric"] == {
        "__name__": "tokenbook:spend_usd_per_hour:rate1h",
        "owner": "alice",
        "team": "search",
        "agent": "crawler",
        "workload": "indexing",
        "key_id": crawler[0]["metric"]["key_id"],
    }


@pytest.mark.timeout(60)
def test_unattributed_request_fires_its_alert(prometheus: Prometheus) -> None:
    want = {
        "alertname": "TokenbookUnattributedSpend",
        "provider": "openai",
        "key_id": fingerprint(UNKNOWN_KEY),
    }

    def firing() -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = prometheus.api("alerts")["alerts"]
        return [a for a in alerts if a["state"] == "firing" and want.items() <= a["labels"].items()]

    wait_for(lambda: bool(firing()), "TokenbookUnattributedSpend firing")
    (alert,) = firing()
    assert alert["labels"]["severity"] == "warning"
    assert fingerprint(UNKNOWN_KEY) in alert["annotations"]["description"]
    assert "`tokenbook keys issue" in alert["annotations"]["runbook"]


# --- the dashboard's structure (no Prometheus needed) ------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert 38 <= dashboard["schemaVersion"] <= 40
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ATTRIBUTION_VARIABLES:
        var = variables[name]
        assert var["type"] == "query", name
        assert var["multi"] is True, name
        assert var["includeAll"] is True, name
        assert var["allValue"] == ".*", name
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), f"{panel['title']}: no description"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_panel_filters_by_the_variables() -> None:
    """Every selector that can be filtered is: all four variables on metrics with attribution
    labels; the model variable on the time-to-first-token histogram (labels provider, model)."""
    selector = re.compile(r"\b(tokenbook_[a-z_]+)\{([^}]*)\}|\b(tokenbook_[a-z_]+)\b(?!\{)")
    for e in panel_expressions(load_dashboard()):
        for m in selector.finditer(e.expr):
            metric, matchers = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), "")
            used = set(re.findall(r"\$(\w+)", matchers))
            if metric.startswith("tokenbook_time_to_first_token_seconds"):
                assert used == {"model"}, (e.where, metric, matchers)
            elif 'token_type="input", model=~"$model"' in matchers:
                continue  # the per-model input price: a property of the model, not of the selection
            else:
                assert used == set(ATTRIBUTION_VARIABLES), (e.where, metric, matchers)


def test_doc_describes_every_panel_with_its_exact_queries() -> None:
    """docs/dashboard.md has a section per panel with each of its queries verbatim."""
    doc = DOC.read_text()
    dashboard = load_dashboard()
    for panel in panels(dashboard):
        if panel["type"] == "row":
            assert f"\n## {panel['title']}\n" in doc, f"no section for row {panel['title']!r}"
            continue
        assert f"\n### {panel['title']}\n" in doc, f"no section for panel {panel['title']!r}"
        for target in panel["targets"]:
            assert f"```promql\n{target['expr']}\n```" in doc, (panel["title"], target["refId"])
    for var in dashboard["templating"]["list"]:
        assert f"| `{var['name']}` |" in doc, var["name"]
        if var["type"] == "query":
            assert f"`{var['query']['query']}`" in doc, var["name"]


def test_substitution() -> None:
    assert substitute('rate(x{team=~"$team", model=~"${model}"}[$__rate_interval])') == (
        'rate(x{team=~".*", model=~".*"}[1m])'
    )
    with pytest.raises(AssertionError, match="unknown dashboard variable"):
        substitute("x{a=~'$nope'}")
