"""What tokenbook knows about one HTTP request, as plain values (no Envoy types).

The extproc layer builds a `RequestInfo` from Envoy's request-headers message; the gate and the
meter both read it. The provider comes from the Envoy route name, never from a client header.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

#: Dynamic-metadata namespace shared by the gate (writer) and the meter (reader).
METADATA_NAMESPACE = "tokenbook"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    route_name: str
    provider: str | None  # None: the route is not one tokenbook knows
    method: str
    raw_path: str  # `:path` as the client sent it, with the route prefix and the query
    request_id: str
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)  # lower-case names

    @property
    def query(self) -> str:
        _, _, query = self.raw_path.partition("?")
        return query

    @property
    def provider_path(self) -> str:
        """The provider's own path: route prefix (``/<provider>``) and query removed."""
        path, _, _ = self.raw_path.partition("?")
        if self.provider:
            prefix = f"/{self.provider}"
            if path == prefix:
                return "/"
            if path.startswith(prefix + "/"):
                return path[len(prefix) :]
        return path

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def model_from_path(path: str) -> str | None:
    """The model a URL names (Gemini ``/models/X:``, Bedrock ``/model/X/``, Azure deployments)."""
    for marker, stops in (("/models/", ":/"), ("/model/", "/"), ("/deployments/", "/")):
        start = path.find(marker)
        if start < 0:
            continue
        rest = path[start + len(marker) :]
        end = len(rest)
        for stop in stops:
            idx = rest.find(stop)
            if idx >= 0:
                end = min(end, idx)
        name = unquote(rest[:end])
        if name:
            return name
    return None
