"""`make demo`: the whole stack on this machine, driven by the official SDKs, no provider account.

Starts redis-server, `tokenbook serve`, Envoy (rendered by `tokenbook envoy-config`), a fake
provider answering with recorded provider responses (OpenAI, Anthropic, Gemini, Bedrock; JSON and
streams; with cached and reasoning tokens) and — where the `prometheus` binary is installed — a
Prometheus loaded with tokenbook's scrape config and alert rules. It issues keys for a few teams,
agents and workloads, drives traffic through the gateway with the `openai` and `anthropic` SDKs
(and plain HTTP for Gemini and Bedrock), including one agent that loops and burns money, shows
live progress, then prints the audit report, the alerts that fired, and where to look.

Time compression: the shipped alert rules look at windows of minutes to a day, and page after
10 minutes. The demo runs the *same* rule files with every duration divided by 60 (a 10m `for:`
becomes 10s, a 1d baseline 24m), scraping every second, so a runaway agent pages within the demo.

``--duration`` sets the seconds of traffic; ``--keep-running`` leaves everything up afterwards
until Ctrl-C. Ctrl-C at any time stops everything the demo started.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai

from tokenbook.testing.stack import ManagedProcess, Stack, executable, free_port, http_get

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
RULES = REPO / "deploy" / "prometheus" / "rules"
TIME_COMPRESSION = 60

_DURATION = re.compile(r"(?<![A-Za-z0-9_])(\d+)([smhd])(?![A-Za-z0-9_])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Agent:
    owner: str
    team: str
    agent: str
    workload: str
    send: Callable[[Stack, str, random.Random], None]
    pause_s: float  # between requests; 0 = as fast as it can (the runaway)


def _openai_json(stack: Stack, key: str, rng: random.Random) -> None:
    fixture = rng.choice(
        [
            "openai/chat/nonstream_prompt_cache_hit.json",
            "openai/chat/nonstream_prompt_cache_miss.json",
        ]
    )
    client = openai.OpenAI(base_url=f"{stack.gateway}/openai/v1", api_key=key, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "summarise this page"}],
        extra_headers={"x-fake-fixture": fixture},
    )


def _openai_reasoning_stream(stack: Stack, key: str, rng: random.Random) -> None:
    client = openai.OpenAI(base_url=f"{stack.gateway}/openai/v1", api_key=key, max_retries=0)
    # No stream_options: the gateway adds include_usage, so the stream reports its usage.
    for _ in client.chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "plan the next step"}],
        stream=True,
    ):
        pass


def _anthropic_stream(stack: Stack, key: str, rng: random.Random) -> None:
    client = anthropic.Anthropic(base_url=f"{stack.gateway}/anthropic", api_key=key, max_retries=0)
    with client.messages.stream(
        model="claude-3-5-sonnet-20240620",
        max_tokens=512,
        messages=[{"role": "user", "content": "triage this ticket"}],
        extra_headers={"x-fake-fixture": "anthropic/messages/stream_cache_read.sse"},
    ) as stream:
        for _ in stream.text_stream:
            pass


def _anthropic_cache_write(stack: Stack, key: str, rng: random.Random) -> None:
    client = anthropic.Anthropic(base_url=f"{stack.gateway}/anthropic", api_key=key, max_retries=0)
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=512,
        messages=[{"role": "user", "content": "draft a campaign variant"}],
        extra_headers={"x-fake-fixture": "anthropic/messages/nonstream_cache_write_and_read.json"},
    )


def _anthropic_opus(stack: Stack, key: str, rng: random.Random) -> None:
    client = anthropic.Anthropic(base_url=f"{stack.gateway}/anthropic", api_key=key, max_retries=0)
    client.messages.create(
        model="claude-3-opus-20240229",
        max_tokens=512,
        messages=[{"role": "user", "content": "write another campaign variant, again"}],
        extra_headers={"x-fake-fixture": "anthropic/messages/nonstream_claude3_basic.json"},
    )


def _raw(stack: Stack, key: str, path: str, fixture: str) -> None:
    req = urllib.request.Request(
        f"{stack.gateway}{path}",
        data=b'{"contents":[{"parts":[{"text":"hi"}]}]}',
        headers={"authorization": f"Bearer {key}", "x-fake-fixture": fixture},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def _gemini_or_bedrock(stack: Stack, key: str, rng: random.Random) -> None:
    if rng.random() < 0.5:
        _raw(
            stack,
            key,
            "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "gemini/generate_content/stream_sse_thoughts_gemini25pro.sse",
        )
    else:
        _raw(
            stack,
            key,
            "/bedrock/model/us.amazon.nova-micro-v1%3A0/converse-stream",
            "bedrock/converse/stream_nova_micro.bin",
        )


AGENTS = (
    Agent("alice", "search", "crawler", "indexing", _openai_json, 0.5),
    Agent("carol", "search", "planner", "indexing", _openai_reasoning_stream, 0.7),
    Agent("bob", "support", "triage-bot", "tickets", _anthropic_stream, 0.6),
    Agent("erin", "research", "summariser", "papers", _gemini_or_bedrock, 2.0),
    Agent("frank", "growth", "copywriter", "campaigns", _anthropic_cache_write, 1.0),
)
# The runaway: an agent stuck in a retry loop on an expensive model, two calls in flight.
RUNAWAY = Agent("dave", "growth", "looper", "campaigns", _anthropic_opus, 0.0)
RUNAWAY_THREADS = 2


def compress_rules(text: str, factor: int = TIME_COMPRESSION) -> str:
    """The rule file with every Prometheus duration divided by `factor` (at least 1s)."""

    def shorter(m: re.Match[str]) -> str:
        seconds = max(1, int(m.group(1)) * _SECONDS[m.group(2)] // factor)
        return f"{seconds}s"

    return _DURATION.sub(shorter, text)


class Prometheus:
    """A Prometheus scraping the demo's tokenbook every second, with compressed rules."""

    def __init__(self, workdir: Path, metrics_port: int) -> None:
        self.port = free_port()
        rules_dir = workdir / "rules"
        rules_dir.mkdir(exist_ok=True)
        for rule_file in sorted(RULES.glob("*.yml")):
            (rules_dir / rule_file.name).write_text(compress_rules(rule_file.read_text()))
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules_dir}/*.yml\n"
            "scrape_configs:\n  - job_name: tokenbook\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        )
        self.proc = ManagedProcess(
            "prometheus",
            [
                executable("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            workdir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.proc.start()
        self.proc.wait_ready(lambda: http_get(f"{self.url}/-/ready")[0] == 200, 30)
        return self

    def alerts(self) -> list[dict[str, object]]:
        status, body = http_get(f"{self.url}/api/v1/alerts")
        if status != 200:
            return []
        alerts: list[dict[str, object]] = json.loads(body)["data"]["alerts"]
        return alerts

    def query(self, expr: str) -> list[dict[str, object]]:
        url = f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}"
        status, body = http_get(url)
        if status != 200:
            return []
        result: list[dict[str, object]] = json.loads(body)["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.stop()


def _issue(stack: Stack, a: Agent) -> str:
    done = subprocess.run(
        [
            executable("tokenbook"),
            "keys",
            "issue",
            "--owner",
            a.owner,
            "--team",
            a.team,
            "--agent",
            a.agent,
            "--workload",
            a.workload,
            "--format",
            "json",
            "--redis-url",
            stack.redis_url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key: str = json.loads(done.stdout)["key"]
    return key


class Traffic:
    """One thread per agent, sending until stopped; counts what was sent."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sent = 0
        self.failed = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start_agent(self, agent: Agent, key: str, seed: int) -> None:
        t = threading.Thread(target=self._run, args=(agent, key, seed), daemon=True)
        t.start()
        self._threads.append(t)

    def _run(self, agent: Agent, key: str, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                agent.send(self.stack, key, rng)
                ok = True
            except (openai.APIError, anthropic.APIError, OSError):
                ok = False
            with self._lock:
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
            if agent.pause_s:
                self.stop.wait(agent.pause_s * rng.uniform(0.5, 1.5))

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(15)


def _spend(stack: Stack) -> float:
    total = 0.0
    for line in stack.scrape().splitlines():
        if line.startswith("tokenbook_cost_usd_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _print_alerts(prom: Prometheus) -> None:
    alerts = prom.alerts()
    firing = [a for a in alerts if a.get("state") == "firing"]
    print(f"\n== Alerts ({len(firing)} firing, {len(alerts) - len(firing)} pending) ==")
    for a in alerts:
        labels = a.get("labels", {})
        annotations = a.get("annotations", {})
        assert isinstance(labels, dict)
        assert isinstance(annotations, dict)
        who = ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity"))
        print(f"  [{a.get('state')}] {labels.get('alertname')} ({who})")
        if annotations.get("summary"):
            print(f"      {annotations['summary']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument(
        "--keep-running", action="store_true", help="leave everything up until Ctrl-C"
    )
    ns = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tokenbook-demo-"))
    stack = Stack(workdir=work, corpus=CORPUS)
    prom: Prometheus | None = None
    traffic: Traffic | None = None
    print(f"starting redis-server, tokenbook, Envoy and a fake provider (logs in {work}) ...")
    try:
        stack.start()
        if shutil.which("prometheus"):
            prom = Prometheus(work, stack.metrics_port).start()
        else:
            print("  (no `prometheus` binary: alerts are skipped; `make system-deps` installs it)")
        print(f"  gateway      {stack.gateway}/<provider>/...")
        print(f"  metrics      {stack.metrics_url}")
        if prom is not None:
            print(f"  prometheus   {prom.url}  (alerts: {prom.url}/alerts)")
        keys = {a: _issue(stack, a) for a in (*AGENTS, RUNAWAY)}
        print(f"issued {len(keys)} keys (owner/team/agent/workload):")
        for a in keys:
            print(f"  {a.owner}/{a.team}/{a.agent}/{a.workload}")
        traffic = Traffic(stack)
        for n, a in enumerate(AGENTS):
            traffic.start_agent(a, keys[a], seed=n)
        runaway_at = time.monotonic() + ns.duration / 4
        deadline = time.monotonic() + ns.duration
        started = False
        while time.monotonic() < deadline:
            if not started and time.monotonic() >= runaway_at:
                for n in range(RUNAWAY_THREADS):
                    traffic.start_agent(RUNAWAY, keys[RUNAWAY], seed=99 + n)
                started = True
                print("\n  -> agent 'looper' (workload campaigns) starts looping on claude-3-opus")
            firing = len([x for x in prom.alerts() if x.get("state") == "firing"]) if prom else 0
            left = deadline - time.monotonic()
            print(
                f"  {traffic.sent:>6} requests  ${_spend(stack):>9.4f} booked  "
                f"{firing} alerts firing  {left:>4.0f}s left",
                end="\r",
                flush=True,
            )
            time.sleep(1)
        traffic.join()
        time.sleep(1.5)  # the meter books asynchronously; let Prometheus scrape once more
        print(f"\n\n{traffic.sent} requests sent through the gateway, {traffic.failed} failed.")
        print("\n== tokenbook audit ==")
        audit = subprocess.run(
            [
                executable("tokenbook"),
                "audit",
                "--metrics-url",
                stack.metrics_url,
                "--format",
                "table",
            ],
            capture_output=True,
            text=True,
        )
        print(audit.stdout or audit.stderr)
        if prom is not None:
            _print_alerts(prom)
        if ns.keep_running:
            print("\neverything keeps running (see the URLs above); Ctrl-C stops it")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        if traffic is not None:
            traffic.join()
        if prom is not None:
            prom.stop()
        stack.stop()
        print("stopped everything the demo started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
