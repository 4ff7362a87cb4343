"""`tokenbook serve --loop`: which event loop runs the service."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tokenbook.loop import loop_name, run_loop
from tokenbook.settings import SettingsError, load_settings


def test_auto_takes_uvloop_for_h2_and_asyncio_for_grpcio() -> None:
    assert loop_name("auto", "h2") == "uvloop"  # uvloop is a dependency: installed here
    assert loop_name("auto", "grpcio") == "asyncio"
    assert loop_name("asyncio", "h2") == "asyncio"
    assert loop_name("uvloop", "grpcio") == "uvloop"


def _without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_uvloop(monkeypatch)
    assert loop_name("auto", "h2") == "asyncio"
    with pytest.raises(SettingsError, match="uvloop is not installed"):
        loop_name("uvloop", "h2")


@pytest.mark.parametrize(("choice", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_loop_runs_the_service_on_the_chosen_loop(choice: str, module: str) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    settings = load_settings({"event_loop": choice}, {})
    assert run_loop(which(), settings).split(".")[0] == module


def test_a_bad_loop_setting_is_refused() -> None:
    with pytest.raises(SettingsError, match="event_loop"):
        load_settings({}, {"TOKENBOOK_EVENT_LOOP": "trio"})
