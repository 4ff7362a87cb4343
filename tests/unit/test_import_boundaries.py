"""Only `tokenbook.extproc` (and the generated `tokenbook.v1`) may import protobuf, gRPC or Envoy
types (STYLE.md rule 1): everything else speaks plain Python values."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tokenbook"
FORBIDDEN = ("grpc", "grpc_health", "google.protobuf", "envoy", "xds", "udpa", "tokenbook.v1")
ALLOWED_DIRS = ("extproc", "v1")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_wire_types_outside_extproc() -> None:
    offenders = []
    checked = 0
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ALLOWED_DIRS:
            continue
        checked += 1
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                offenders.append(f"{rel}: imports {name}")
    assert checked > 10, "the source tree was not found"
    assert not offenders, "\n".join(offenders)


def test_the_check_catches_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import grpc\nfrom envoy.service.ext_proc.v3 import external_processor_pb2\n")
    assert _imports(bad) == ["grpc", "envoy.service.ext_proc.v3"]
