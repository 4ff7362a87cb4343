"""The meter hands adapters only `USED_RESPONSE_HEADERS` (and its prefixes): every header name
the usage package reads must be among them, or an adapter would silently see nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tokenbook.usage
from tokenbook.usage.types import USED_RESPONSE_HEADER_PREFIXES, USED_RESPONSE_HEADERS

# Kebab-case constants of the usage package that are not HTTP header names.
NOT_HEADERS = {
    "converse-stream",  # Bedrock API paths (detect.py)
    "invoke-with-response-stream",
    "message-end",  # Cohere stream event types
    "stream-end",
    "utf-8",  # codec names
    "x-gzip",  # a content-encoding value
}
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")


def _kebab_constants() -> set[str]:
    root = Path(tokenbook.usage.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and _KEBAB.match(value):
                found.add(value)
    return found


def test_every_header_the_usage_package_reads_reaches_it() -> None:
    headers = _kebab_constants() - NOT_HEADERS
    assert "x-amzn-bedrock-input-token-count" in headers  # the scan sees the package
    missing = {
        h
        for h in headers
        if h not in USED_RESPONSE_HEADERS and not h.startswith(USED_RESPONSE_HEADER_PREFIXES)
    }
    assert not missing, f"add to USED_RESPONSE_HEADERS (or to NOT_HEADERS here): {missing}"


def test_the_allowlist_holds_only_constants_that_exist() -> None:
    assert _kebab_constants() >= NOT_HEADERS
