"""How the meter learns the request without a request-headers message: Envoy's response
attributes plus the gate's metadata (`codec.request_info_of_attributes`, `epoch_seconds`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokenbook.extproc import codec

ATTRS = {
    "xds.route_name": "gemini",
    "request.id": "rid-7",
    # what Envoy reports by the response on a route with a prefix_rewrite
    "request.path": "/base/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    "request.method": "POST",
}
GATE_PATH = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


def test_the_gates_path_wins_over_the_rewritten_one() -> None:
    req = codec.request_info_of_attributes(ATTRS, {"path": GATE_PATH}, "gemini")
    assert req.provider_path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert req.query == "alt=sse"
    assert (req.method, req.request_id, req.route_name) == ("POST", "rid-7", "gemini")


def test_without_the_gates_metadata_the_attribute_path_serves() -> None:
    # a gate that failed open wrote no metadata
    req = codec.request_info_of_attributes(ATTRS, {}, "gemini")
    assert req.raw_path == ATTRS["request.path"]


def test_the_request_id_falls_back_to_the_gates() -> None:
    attrs = {k: v for k, v in ATTRS.items() if k != "request.id"}
    req = codec.request_info_of_attributes(attrs, {"request_id": "rid-gate"}, "gemini")
    assert req.request_id == "rid-gate"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the form Envoy 1.40 sends (measured)
        ("2026-12-03T22:33:23.827313+00:00", datetime(2026, 12, 3, 22, 33, 23, 827313, UTC)),
        ("2026-12-03T22:33:23Z", datetime(2026, 12, 3, 22, 33, 23, tzinfo=UTC)),
        ("", None),
        ("yesterday", None),
    ],
)
def test_request_time(text: str, expected: datetime | None) -> None:
    got = codec.epoch_seconds(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected.timestamp(), abs=1e-6)
