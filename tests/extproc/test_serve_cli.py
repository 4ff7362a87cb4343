"""`tokenbook serve` as a process: start-up errors, health, metrics and the SIGTERM drain."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tokenbook.extproc.probe import serving
from tokenbook.testing.stack import ManagedProcess, executable, free_port, http_get


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("tokenbook"), "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_admin_without_token_refuses_to_start() -> None:
    done = _serve("--admin", "--listen", f"127.0.0.1:{free_port()}", env={"PATH": "/usr/bin"})
    assert done.returncode == 2
    assert "TOKENBOOK_ADMIN_TOKEN" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("unknown_keys: maybe\n")
    done = _serve("--config", str(cfg))
    assert done.returncode == 2
    assert "unknown_keys" in done.stderr
    cfg.write_text("no_such_setting: 1\n")
    done = _serve("--config", str(cfg))
    assert done.returncode == 2
    assert "no_such_setting" in done.stderr


def test_serves_health_and_metrics_and_drains_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    proc = ManagedProcess(
        "serve",
        [
            executable("tokenbook"),
            "serve",
            "--listen",
            f"127.0.0.1:{grpc_port}",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--redis-url",
            redis_url,
            "--drain-timeout",
            "1",
        ],
        tmp_path,
    ).start()
    try:
        proc.wait_ready(lambda: serving(f"127.0.0.1:{grpc_port}"), 30)
        status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert b"tokenbook_extproc_open_streams" in body
        assert proc.proc is not None
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0, proc.log()
        assert time.monotonic() - started < 10
        assert "draining" in proc.log()
    finally:
        proc.stop()
