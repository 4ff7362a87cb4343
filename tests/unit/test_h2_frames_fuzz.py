"""Fuzzing the HTTP/2 frame layer and the gRPC message parser (hypothesis).

Properties: whatever the bytes, `ServerConnection.receive` raises nothing, terminates, and
writes only whole, well-formed frames (ending, on a protocol violation, with GOAWAY); the result
does not depend on how the bytes were split into reads; the gRPC deframer yields exactly the
framed messages whatever the DATA boundaries, and on garbage raises only `GrpcError`.
"""

from __future__ import annotations

import h2.config
import h2.connection
import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_h2_frames import REQUEST, Recorder, parse_frames
from tokenbook.extproc.h2 import frames as f
from tokenbook.extproc.h2.connection import H2Config, ServerConnection
from tokenbook.extproc.h2.frames import FrameType
from tokenbook.extproc.h2.grpc_wire import Deframer, GrpcError
from tokenbook.extproc.h2.headers import HeaderDecoder, encode_headers

FUZZ = settings(
    max_examples=300,
    deadline=500,  # ms per example: a hang or a quadratic blow-up fails
    suppress_health_check=[HealthCheck.too_slow],
)
HANDSHAKE = f.PREFACE + f.settings_frame({})


def _valid_client_bytes() -> bytes:
    """A realistic client byte stream: settings, a few requests with bodies, a ping, a reset."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for i in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [*REQUEST, ("x-n", str(i))])
        client.send_data(sid, b"\x00\x00\x00\x00\x03abc", end_stream=i != 1)
    client.ping(b"12345678")
    client.reset_stream(3)
    client.increment_flow_control_window(1000)
    data: bytes = client.data_to_send()
    return data


VALID = _valid_client_bytes()


def run(chunks: list[bytes], config: H2Config | None = None) -> tuple[bytes, Recorder]:
    rec = Recorder()
    conn = ServerConnection(rec, config)
    rec.conn = conn
    conn.initiate()
    out = conn.data_to_send()
    for chunk in chunks:
        conn.receive(chunk)  # must not raise
        out += conn.data_to_send()
    frames = parse_frames(out)  # whole frames only
    types = [t for t, _, _, _ in frames]
    if conn.closed:
        assert types[-1] == FrameType.GOAWAY, "a connection error ends with GOAWAY"
    return out, rec


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def _events(rec: Recorder) -> tuple[object, ...]:
    return (rec.requests, rec.data, rec.trailers, rec.closed, rec.pings, rec.goaways)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_after_the_handshake(data: bytes) -> None:
    run([HANDSHAKE, data])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_instead_of_a_preface(data: bytes) -> None:
    run([data])


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.integers(min_value=0, max_value=len(VALID)), max_size=6),
)
def test_mutated_valid_streams(mutations: list[tuple[int, int]], cuts: list[int]) -> None:
    data = bytearray(VALID)
    for index, value in mutations:
        data[index] = value
    whole, rec_whole = run([bytes(data)])
    pieces, rec_pieces = run(_split(bytes(data), cuts))
    assert whole == pieces, "the output must not depend on how the bytes were read"
    assert _events(rec_whole) == _events(rec_pieces)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*FrameType, 0xAA]),
            st.integers(0, 255),
            st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
            st.binary(max_size=64),
        ),
        max_size=12,
    )
)
def test_random_well_framed_frames(frames: list[tuple[int, int, int, bytes]]) -> None:
    """Syntactically whole frames with random types, flags, ids and payloads."""
    data = HANDSHAKE + b"".join(f.frame(t, fl, sid, p) for t, fl, sid, p in frames)
    run([data], H2Config(max_header_list_size=512, max_concurrent_streams=2))


def test_a_valid_stream_is_not_an_error() -> None:
    out, rec = run([VALID])
    assert [r[0] for r in rec.requests] == [1, 3, 5]
    assert not any(t == FrameType.GOAWAY for t, _, _, _ in parse_frames(out))


# -- gRPC message framing ----------------------------------------------------------------------


def _framed(messages: list[bytes]) -> bytes:
    return b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in messages)


@FUZZ
@given(
    st.lists(st.binary(max_size=300), max_size=6),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_deframer_yields_the_messages_whatever_the_boundaries(
    messages: list[bytes], cuts: list[int]
) -> None:
    deframer = Deframer()
    got: list[bytes] = []
    for piece in _split(_framed(messages), cuts):
        got += deframer.feed(piece)
    assert got == messages
    assert not deframer.partial


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_deframer_on_garbage_raises_only_grpc_errors(pieces: list[bytes]) -> None:
    deframer = Deframer(max_bytes=1000)
    try:
        for piece in pieces:
            for message in deframer.feed(piece):
                assert len(message) <= 1000
    except GrpcError:
        pass


def test_deframer_errors() -> None:
    import pytest

    from tokenbook.extproc.h2.grpc_wire import Status

    with pytest.raises(GrpcError) as compressed:
        Deframer().feed(b"\x01\x00\x00\x00\x01x")
    assert compressed.value.status == Status.INTERNAL
    with pytest.raises(GrpcError) as big:
        Deframer(max_bytes=10).feed(b"\x00\x00\x00\x00\x0b")
    assert big.value.status == Status.RESOURCE_EXHAUSTED
    partial = Deframer()
    assert partial.feed(b"\x00\x00\x00\x00\x05ab") == []
    assert partial.partial


# -- HPACK ---------------------------------------------------------------------------------------

_NAME = st.binary(min_size=1, max_size=20).map(lambda b: b.lower().replace(b":", b"x"))


@FUZZ
@given(st.lists(st.tuples(_NAME, st.binary(max_size=100)), max_size=10))
def test_our_encoding_round_trips(headers: list[tuple[bytes, bytes]]) -> None:
    block = encode_headers(headers)
    assert hpack.Decoder().decode(block, raw=True) == headers
    decoder = HeaderDecoder(max_list_size=1 << 20)
    decoder.settings_acknowledged()
    decoded, _, _ = decoder.decode_request(b"\x20" + block)
    assert list(decoded) == headers
