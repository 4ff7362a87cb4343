"""tokenbook's own HTTP/2 + gRPC wire layer, for `tokenbook.extproc.h2_transport`.

`frames` (constants, serialisation, the error tree), `headers` (HPACK via python-hyper's
`hpack`, cached), `connection` (the sans-IO server connection: streams, flow control, SETTINGS,
PING, GOAWAY), `grpc_wire` (gRPC message framing and status trailers).
"""
