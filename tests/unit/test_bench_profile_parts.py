"""`bench/profile_parts`: the "where the time goes" table `make bench` prints when a target is
missed, from py-spy's raw stacks (hand-made ones here, in py-spy's format)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import profile_parts as pp

_TRANSPORT = (
    "run (uvloop/__init__.py:92);_Connection.data_received (tokenbook/extproc/h2_transport.py:542)"
    ";ServerConnection.receive (tokenbook/extproc/h2/connection.py:249)"
)
RAW = "\n".join(
    [
        # inside the gate, under the transport: the gate's
        f"{_TRANSPORT};Gate._admit (tokenbook/gate.py:190)"
        ";client_attribution_headers (tokenbook/attribution/headers.py:143) 6",
        # a dataclass __init__ has no file of ours: the caller's part
        f"{_TRANSPORT};MeterSession._finish (tokenbook/meter.py:150)"
        ";__create_fn__.<locals>.__init__ (<string>:3) 2",
        # codec both reads messages and writes answers
        f"{_TRANSPORT};GateStream._headers (tokenbook/extproc/streams.py:89)"
        ";headers_of (tokenbook/extproc/codec.py:30) 4",
        f"{_TRANSPORT};GateStream._headers (tokenbook/extproc/streams.py:102)"
        ";continue_request_headers (tokenbook/extproc/codec.py:179) 3",
        # the ledger's admission record is part of the gate's decision, its writer is not
        f"{_TRANSPORT};AdmissionControl.admit (tokenbook/ledger/admission.py:297) 1",
        "run (asyncio/events.py:80);LedgerWriter._write (tokenbook/ledger/writer.py:316) 1",
        # the Redis client's socket write is asyncio's, under the ledger: the ledger's
        "Runner.run (asyncio/runners.py:118)"
        ";_send_packed_command (redis/asyncio/connection.py:1168)"
        ";StreamWriter.writelines (asyncio/streams.py:346) 1",
        # the event loop alone, with no other part in the stack: the transport's
        "run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118) 2",
        # the no-op's own work; its script's main, under everything it runs, is not
        f"main (noop_extproc.py:240);{_TRANSPORT};NoopGate.on_message (noop_extproc.py:97) 1",
        "main (noop_extproc.py:240);run (uvloop/__init__.py:92) 1",
        # only the transport
        f"{_TRANSPORT};ServerConnection.send_data (tokenbook/extproc/h2/connection.py:566) 1",
        # no frame of any part (another thread)
        "_bootstrap (threading.py:1002);serve_forever (socketserver.py:243) 1",
        "not a stack line",
    ]
)


def _shares(tmp_path: Path) -> dict[str, float]:
    raw = tmp_path / "profile.txt"
    raw.write_text(RAW)
    rows, samples = pp.shares(pp.read_stacks(raw))
    assert samples == 24
    assert [p for p, _ in rows] == [p for p, _ in pp.PARTS] + [pp.OTHER]
    return dict(rows)


def test_each_sample_goes_to_its_innermost_part(tmp_path: Path) -> None:
    got = _shares(tmp_path)
    name = {p.split(" (")[0]: p for p, _ in pp.PARTS}
    assert got[name["gate decision"]] == 7 / 24
    assert got[name["processor glue"]] == 2 / 24
    assert got[name["reading messages"]] == 4 / 24
    assert got[name["gate answer"]] == 3 / 24
    assert got[name["ledger"]] == 2 / 24
    assert got[name["the no-op processor"]] == 1 / 24
    assert got[name["transport and event loop"]] == 4 / 24
    assert got[pp.OTHER] == 1 / 24
    assert abs(sum(got.values()) - 1.0) < 1e-9


def test_the_table_gives_microseconds_per_request_when_measured(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(RAW)
    rows, _ = pp.shares(pp.read_stacks(raw))
    lines = pp.table(rows, 400.0)
    gate = next(line for line in lines if "gate decision" in line)
    assert gate.split()[-2:] == ["29.2%", "117"]
    assert all(line.split()[-1] == "-" for line in pp.table(rows, None)[1:])


def test_an_empty_profile_has_no_shares(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text("")
    rows, samples = pp.shares(pp.read_stacks(raw))
    assert samples == 0
    assert all(share == 0.0 for _, share in rows)


def test_the_floor_line_compares_the_allowance_with_the_transport_part() -> None:
    rows = [(pp.TRANSPORT, 0.4), (pp.OTHER, 0.6)]
    below = pp.floor_line("tokenbook-h2", 160.0, rows, 500.0)
    assert below is not None
    assert "allows tokenbook-h2 184 µs" in below
    assert "below its transport and event-loop part alone (200 µs" in below
    above = pp.floor_line("tokenbook-h2", 200.0, rows, 500.0)
    assert above is not None
    assert "above" in above
    assert pp.floor_line("tokenbook-h2", None, rows, 500.0) is None
    assert pp.floor_line("tokenbook-h2", 160.0, rows, None) is None


def test_a_profile_py_spy_did_not_write_has_no_stacks(tmp_path: Path) -> None:
    # py-spy may be refused the process (ptrace): the bench reports it and keeps its results.
    assert pp.read_stacks(tmp_path / "never-written.txt") == []
