"""A real, throw-away ``redis-server`` for tests.

``RedisServer`` starts the Debian ``redis-server`` binary on a free 127.0.0.1 port in its own
temporary directory, waits until it answers PING, and stops only its own process. It can be
stopped and started again on the same port, which is how outage tests take Redis away from code
that holds a client pointing at it.

Use it as a context manager, sync or async (starting takes a few milliseconds, so the async
form simply blocks)::

    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        server.stop()      # Redis is gone (SIGTERM; stop(kill=True) for SIGKILL)
        server.start()     # back, same port; data survives only with persistence=True
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

_HOST = "127.0.0.1"
_PING = b"*1\r\n$4\r\nPING\r\n"
_FLUSHALL = b"*1\r\n$8\r\nFLUSHALL\r\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _command(port: int, command: bytes, timeout_s: float = 1.0) -> bytes:
    """Send one RESP command and return the first reply line (without CRLF)."""
    with socket.create_connection((_HOST, port), timeout=timeout_s) as s:
        s.sendall(command)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
    return reply.strip()


class RedisServer:
    """One ``redis-server`` process owned by a test (see the module docstring)."""

    def __init__(
        self,
        *,
        persistence: bool = False,
        executable: str = "redis-server",
        startup_timeout_s: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """``persistence``: keep data across `stop`/`start` (append-only file in the temp dir)."""
        found = shutil.which(executable)
        if found is None:
            raise RuntimeError(f"{executable} not found: install it (apt-get install redis-server)")
        self._executable = found
        self._persistence = persistence
        self._startup_timeout_s = startup_timeout_s
        self._extra_args = extra_args
        self._dir = Path(tempfile.mkdtemp(prefix="tokenbook-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0  # chosen at the first start, then kept

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running:
            return
        if self.port:
            self._start_on(self.port)
            return
        last: RuntimeError | None = None
        for _ in range(5):  # another process may grab the free port before redis binds it
            port = free_port()
            try:
                self._start_on(port)
            except RuntimeError as exc:
                last = exc
                continue
            self.port = port
            return
        raise RuntimeError(f"could not start redis-server: {last}")

    def _start_on(self, port: int) -> None:
        persistence = ["--appendonly", "yes"] if self._persistence else ["--appendonly", "no"]
        args = [
            self._executable,
            "--port", str(port),
            "--bind", _HOST,
            "--dir", str(self._dir),
            "--save", "",
            *persistence,
            "--daemonize", "no",
            "--logfile", str(self._dir / "redis.log"),
            *self._extra_args,
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {proc.returncode}: {self._log_tail()}"
                )
            try:
                if _command(port, _PING) == b"+PONG":
                    self._proc = proc
                    return
            except OSError:
                pass
            time.sleep(0.01)
        self._terminate(proc, kill=True)
        raise RuntimeError(f"redis-server did not answer PING on port {port}: {self._log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop our process (SIGTERM, or SIGKILL with ``kill``) and wait for it to exit."""
        if self._proc is not None:
            self._terminate(self._proc, kill=kill)
            self._proc = None

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def flushall(self) -> None:
        """Empty every database."""
        reply = _command(self.port, _FLUSHALL)
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            lines = (self._dir / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> RedisServer:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
