"""Key format, hashing and attribution validation. Pure functions, no I/O.

A tokenbook key is ``tb_<key_id>_<secret>``:

- ``key_id``: 12 lowercase base32 characters (``a-z``, ``2-7``), 60 random bits. Public: it is a
  metric label and appears in logs, so it identifies a key without revealing it.
- ``secret``: 32 random bytes, url-safe base64 without padding (43 characters). Its alphabet
  contains ``_`` and ``-``, so a key is parsed by the fixed ``key_id`` length, never by splitting on
  ``_``.

Only ``sha256(key)`` is stored (`hash_key`). A plain, unkeyed SHA-256 is enough because the
secret has 256 bits of entropy: there is nothing to brute-force, and the gate can hash in a
microsecond on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from tokenbook.attribution.model import ATTRIBUTION_FIELDS, UNATTRIBUTED, Attribution

KEY_PREFIX = "tb_"
KEY_ID_LENGTH = 12
SECRET_BYTES = 32

#: What an owner, team, agent or workload may look like: safe as a header value, a Prometheus
#: label value and a Redis key part, without quoting.
NAME_RE = r"[a-z0-9][a-z0-9._-]{0,62}"

KEY_ID_RE = rf"[a-z2-7]{{{KEY_ID_LENGTH}}}"

_NAME = re.compile(NAME_RE)
_KEY_ID = re.compile(KEY_ID_RE)
# 43 characters is 32 bytes in unpadded base64; the upper bound only keeps junk out.
_KEY = re.compile(rf"{KEY_PREFIX}({KEY_ID_RE})_[A-Za-z0-9_-]{{43,256}}")

#: Values tokenbook books itself: ``unattributed`` traffic and the cardinality guard's ``other``
#: bucket. A key carrying them would be indistinguishable from those buckets in every report.
RESERVED_NAMES: frozenset[str] = frozenset({UNATTRIBUTED, "other"})

# Domain-separation strings: the same key hashed for different purposes must give unrelated
# values, so a fingerprint (public, in metrics) can never be matched against stored hashes.
_FINGERPRINT_DOMAIN = b"tokenbook/fingerprint/v1"
_IMPORTED_ID_DOMAIN = b"tokenbook/imported-key-id/v1"


class AttributionError(ValueError):
    """An owner, team, agent or workload is missing or malformed. ``field`` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def generate_key() -> tuple[str, str]:
    """A new random key and its key_id: ``("tb_<key_id>_<secret>", key_id)``."""
    # 10 bytes are exactly 16 base32 characters (no padding); the first 12 carry 60 random bits.
    key_id = _b32(secrets.token_bytes(10))[:KEY_ID_LENGTH]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    return f"{KEY_PREFIX}{key_id}_{secret}", key_id


def parse_key_id(key: str) -> str | None:
    """The key_id of a well-formed tokenbook key, else None (e.g. a provider's own key)."""
    m = _KEY.fullmatch(key)
    return m.group(1) if m else None


def is_key_id(value: str) -> bool:
    """True for something shaped like a key_id (issued or imported)."""
    return _KEY_ID.fullmatch(value) is not None


def hash_key(key: str) -> str:
    """sha256 hex of the full key: the only form in which the registry stores a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def fingerprint(key: str) -> str:
    """Stable, non-reversible id for a key the registry does not know (booked as key_id).

    Keyed with a fixed domain string so it differs from `hash_key`: a fingerprint in a metric
    label cannot be looked up in, or correlated with, the registry's stored hashes. 48 bits tell
    keys apart in reports; they are not meant to be collision-proof.
    """
    mac = hmac.new(_FINGERPRINT_DOMAIN, key.encode("utf-8"), hashlib.sha256)
    return "fp_" + mac.hexdigest()[:12]


def imported_key_id(key_hash: str) -> str:
    """The key_id of an imported provider key: derived from its hash, so that importing the same
    provider key twice yields the same key_id and the duplicate is detected."""
    digest = hashlib.sha256(_IMPORTED_ID_DOMAIN + b"\0" + key_hash.encode("ascii")).digest()
    return _b32(digest)[:KEY_ID_LENGTH]


def name_problem(value: str | None) -> str | None:
    """Why ``value`` cannot be an attribution name (``"missing"``, ``"malformed"``,
    ``"reserved"``), or None if it can."""
    if value is None or value == "":
        return "missing"
    if _NAME.fullmatch(value) is None:
        return "malformed"
    if value in RESERVED_NAMES:
        return "reserved"
    return None


def validate_name(field: str, value: str | None) -> str:
    """``value`` if it is a well-formed attribution name, else `AttributionError`."""
    problem = name_problem(value)
    if problem is None and value is not None:
        return value
    if problem == "missing":
        message = f"{field} is missing: every key must name its owner, team, agent and workload"
    elif problem == "malformed":
        message = (
            f"{field} {value!r} is malformed: use 1-63 lowercase letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    else:
        message = f"{field} {value!r} is reserved for tokenbook's own bookings: choose another"
    raise AttributionError(field, message)


def validate_attribution(
    owner: str | None, team: str | None, agent: str | None, workload: str | None
) -> Attribution:
    """All four fields present and well-formed, else `AttributionError` for the first bad one.

    There is deliberately no way around this: an unattributed key cannot be created.
    """
    values = dict(zip(ATTRIBUTION_FIELDS, (owner, team, agent, workload), strict=True))
    checked = {name: validate_name(name, value) for name, value in values.items()}
    return Attribution(**checked)


_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_ref(field: str, value: str) -> str:
    """A name that points into the operator's configuration (credential ref, provider id)."""
    if _REF.fullmatch(value) is None:
        raise AttributionError(
            field,
            f"{field} {value!r} is malformed: use 1-128 letters, digits, '.', '_' or '-'",
        )
    return value


def validate_actor(value: str) -> str:
    """Who performs an admin action (``created_by``, ``revoked_by``): free text, one safe line."""
    if not value or len(value) > 128 or not value.isprintable():
        raise AttributionError(
            "by", f"admin identity {value!r} must be 1-128 printable characters (see --by)"
        )
    return value


def validate_provider(value: str) -> str:
    """A provider id (route prefix, ``provider`` label): lower-case like the corpus ids."""
    if _NAME.fullmatch(value) is None:
        raise AttributionError(
            "provider",
            f"provider {value!r} is malformed: use a provider id such as openai, anthropic, gemini",
        )
    return value
