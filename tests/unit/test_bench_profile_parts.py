"""`bench/profile_parts`: the "where the time goes" table `make bench` prints when a target is
missed, from py-spy's raw stacks (hand-made ones here, in py-spy's format)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import profile_parts as pp

_TRANSPORT = (
    "run (uvloop/__init__.py:92);_Connection.data_received (tokenbook/extproc/h2_transport.py:542)"
    ";ServerConnection.receive (tokenbook/extproc/h2/connection.py:239)"
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
        "run (asyncio/events.py:80);LedgerWriter._write (tokenbook/ledger/writer.py:316) 2",
        # only the transport
        f"{_TRANSPORT};ServerConnection.send_data (tokenbook/extproc/h2/connection.py:566) 1",
        # no frame of any part (another thread)
        "_bootstrap (threading.py:1002);serve_forever (socketserver.py:233) 1",
        "not a stack line",
    ]
)


def _shares(tmp_path: Path) -> dict[str, float]:
    raw = tmp_path / "profile.txt"
    raw.write_text(RAW)
    rows, samples = pp.shares(pp.read_stacks(raw))
    assert samples == 20
    assert [p for p, _ in rows] == [p for p, _ in pp.PARTS] + [pp.OTHER]
    return dict(rows)


def test_each_sample_goes_to_its_innermost_part(tmp_path: Path) -> None:
    got = _shares(tmp_path)
    name = {p.split(" (")[0]: p for p, _ in pp.PARTS}
    assert got[name["gate decision"]] == 7 / 20
    assert got[name["processor glue"]] == 2 / 20
    assert got[name["reading messages"]] == 4 / 20
    assert got[name["gate answer"]] == 3 / 20
    assert got[name["ledger"]] == 2 / 20
    assert got[name["transport and event loop"]] == 1 / 20
    assert got[pp.OTHER] == 1 / 20
    assert sum(got.values()) == 1.0


def test_the_table_gives_microseconds_per_request_when_measured(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(RAW)
    rows, _ = pp.shares(pp.read_stacks(raw))
    lines = pp.table(rows, 400.0)
    gate = next(line for line in lines if "gate decision" in line)
    assert gate.split()[-2:] == ["35.0%", "140"]
    assert all(line.split()[-1] == "-" for line in pp.table(rows, None)[1:])


def test_an_empty_profile_has_no_shares(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text("")
    rows, samples = pp.shares(pp.read_stacks(raw))
    assert samples == 0
    assert all(share == 0.0 for _, share in rows)
