"""The committed generated code in src/tokenbook/v1 matches protos/ (run `make protos`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    protos = sorted((REPO / "protos" / "tokenbook" / "v1").glob("*.proto"))
    assert protos
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "protos"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    generated = sorted((tmp_path / "tokenbook" / "v1").iterdir())
    assert len(generated) == 3 * len(protos)
    stale = [
        g.name
        for g in generated
        if g.read_bytes() != (REPO / "src" / "tokenbook" / "v1" / g.name).read_bytes()
    ]
    assert not stale, f"stale generated files {stale}: run `make protos`"
