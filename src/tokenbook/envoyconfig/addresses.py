"""Parsing of the addresses and URLs that `tokenbook envoy-config` accepts.

Everything here turns operator input into small frozen values, or raises `ValueError` with a
message that says what was expected; nothing here knows about Envoy's config schema.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# Provider ids are route prefixes, route names and a metric label: keep them plain.
PROVIDER_ID_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# The wildcard key of --upstream: every provider on one URL.
EVERY_PROVIDER = "*"

_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 1123 host names (also accepts single labels such as `localhost` or a compose service name).
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PATH_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A TCP endpoint; `is_ip` decides between a STATIC and a DNS cluster."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.host)


@dataclass(frozen=True, slots=True)
class PipePath:
    """A unix domain socket path (`unix:/path`), an Envoy `pipe` address."""

    path: str


@dataclass(frozen=True, slots=True)
class UpstreamUrl:
    """A provider upstream: where Envoy connects and which path prefix replaces `/<provider>/`."""

    scheme: str  # "http" or "https"
    host: str  # without brackets for IPv6
    port: int
    base_path: str  # "" or "/seg[/seg...]", never a trailing slash

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.host)

    @property
    def authority(self) -> str:
        """The Host/:authority a client of this upstream would send (port only if not default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.base_path}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse_port(text: str, what: str, *, allow_zero: bool = False) -> int:
    if not text.isdigit():
        raise ValueError(f"{what}: port {text!r} is not a number")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{what}: port {port} is outside {low}-65535")
    return port


def _check_host(host: str, what: str) -> str:
    if _is_ip(host) or _HOSTNAME_RE.fullmatch(host):
        return host
    raise ValueError(f"{what}: {host!r} is neither an IP address nor a host name")


def parse_host_port(spec: str, what: str) -> HostPort:
    """Parse `HOST:PORT` or `[IPv6]:PORT`."""
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":") or not _is_ip(host):
            raise ValueError(f"{what}: expected [IPv6]:PORT, got {spec!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = spec.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{what}: expected HOST:PORT, got {spec!r}")
        if ":" in host:
            raise ValueError(f"{what}: write an IPv6 address in brackets, [{host}]:{port_text}")
    return HostPort(_check_host(host, what), _parse_port(port_text, what))


def parse_listen_address(spec: str) -> HostPort:
    """The gateway listener: Envoy binds sockets to IP addresses only, never to names."""
    address = parse_host_port(spec, "--listen")
    if not address.is_ip:
        raise ValueError(
            f"--listen: {address.host!r} is not an IP address; "
            "use e.g. 127.0.0.1:10000 or 0.0.0.0:10000"
        )
    return address


def parse_tokenbook_address(spec: str) -> HostPort | PipePath:
    """Where `tokenbook serve` listens: `HOST:PORT`, `[IPv6]:PORT` or `unix:/absolute/path`."""
    if spec.startswith("unix:"):
        path = spec.removeprefix("unix:").removeprefix("//")
        if not path.startswith("/"):
            raise ValueError(f"--tokenbook: expected unix:/absolute/path, got {spec!r}")
        return PipePath(path)
    return parse_host_port(spec, "--tokenbook")


def parse_upstream_url(url: str, what: str) -> UpstreamUrl:
    """Parse `http(s)://host[:port][/base/path]`; query, fragment and credentials are refused."""
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:  # urlsplit raises on a bad port or an unclosed bracket
        raise ValueError(f"{what}: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{what}: {url!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what}: {url!r} must not carry credentials; the gate injects them")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{what}: {url!r} must not have a query or fragment")
    host = parts.hostname
    if not host:
        raise ValueError(f"{what}: {url!r} has no host")
    host = _check_host(host, what)
    if explicit_port == 0:
        raise ValueError(f"{what}: {url!r} has port 0")
    port = _DEFAULT_PORTS[parts.scheme] if explicit_port is None else explicit_port
    segments = [s for s in parts.path.split("/") if s]
    if parts.path and not all(
        _PATH_SEGMENT_RE.fullmatch(s) and s not in {".", ".."} for s in segments
    ):
        raise ValueError(f"{what}: {url!r} has an unusable base path {parts.path!r}")
    base_path = "".join(f"/{s}" for s in segments)
    return UpstreamUrl(parts.scheme, host, port, base_path)


def parse_upstream(spec: str) -> tuple[str, str]:
    """Split `PROVIDER=URL` (or `*=URL`) and check both halves.

    Returns the provider id (or `*`) and the URL as given; the URL is checked here so that a bad
    flag fails before anything is rendered.
    """
    provider, sep, url = spec.partition("=")
    provider = provider.strip()
    url = url.strip()
    if not sep or not provider or not url:
        raise ValueError(
            f"--upstream: expected PROVIDER=URL (e.g. openai=http://127.0.0.1:9000), got {spec!r}"
        )
    if provider != EVERY_PROVIDER and not PROVIDER_ID_RE.fullmatch(provider):
        raise ValueError(
            f"--upstream: provider id {provider!r} must match [a-z][a-z0-9_]* (or be '*')"
        )
    parse_upstream_url(url, f"--upstream {provider}")
    return provider, url
