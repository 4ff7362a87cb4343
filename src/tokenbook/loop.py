"""Which asyncio event loop `tokenbook serve` runs on.

uvloop (libuv) takes less CPU per socket event than asyncio's pure-Python selector loop: the
no-op processor on the h2 transport measured 149 against 166-177 µs of CPU per JSON request
and 0.3 ms less time to first byte (`bench/run.py --loop`). ``auto`` uses it for the h2 transport
when it is installed (a dependency on Linux and macOS) and asyncio otherwise: grpc.aio
(``--transport grpcio``, the reference) is only supported on asyncio's own loop. ``asyncio``
asks for the plain loop; ``uvloop`` insists, and fails at start-up when it is missing.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from tokenbook.settings import Settings, SettingsError

log = logging.getLogger("tokenbook")

T = TypeVar("T")


def loop_name(choice: str, transport: str = "h2") -> str:
    """``uvloop`` or ``asyncio`` for a setting of auto / uvloop / asyncio."""
    if choice == "asyncio" or (choice == "auto" and transport != "h2"):
        return "asyncio"
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "uvloop":
            raise SettingsError("event_loop: uvloop is not installed") from exc
        return "asyncio"
    return "uvloop"


def run_loop(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    try:
        name = loop_name(settings.event_loop, settings.transport)
    except SettingsError:
        main.close()
        raise
    log.debug("event loop: %s", name)
    if name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
