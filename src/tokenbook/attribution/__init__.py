"""Who is spending: key format, the key registry in Redis, the gate's cache, header rules.

Modules, one job each::

    model      Attribution, KeyRecord, Unattributed: plain frozen values
    keys       key format (tb_<key_id>_<secret>), hashing, fingerprints, name validation
    codec      KeyRecord <-> Redis hash fields
    registry   KeyRegistry: issue / import / look up / list / revoke (redis.asyncio, Lua writes)
    cache      KeyResolver: the gate's TTL + LRU cache, invalidated over pub/sub
    headers    where the caller's key is, which headers to strip and set
    keyaudit   what `keys audit` reports
    connect    a Redis client with fail-fast timeouts
    command    the `tokenbook keys` verbs

Errors::

    ValueError
    └── AttributionError      owner/team/agent/workload missing or malformed (usage error)
    RegistryError
    ├── RegistryUnavailable   Redis cannot answer: the gate falls back to cached entries, then to
    │                         its registry_down policy; the CLI exits 1
    ├── KeyNotFound           admin verbs only
    └── DuplicateKey          re-importing a registered provider key
    codec.MalformedRecord     a stored hash that is not a usable key: lookups treat it as unknown
"""

from tokenbook.attribution.cache import KeyResolver
from tokenbook.attribution.codec import MalformedRecord
from tokenbook.attribution.keys import (
    KEY_PREFIX,
    NAME_RE,
    AttributionError,
    fingerprint,
    generate_key,
    hash_key,
    parse_key_id,
    validate_attribution,
)
from tokenbook.attribution.model import (
    UNATTRIBUTED,
    Attribution,
    KeyRecord,
    Unattributed,
)
from tokenbook.attribution.registry import (
    DuplicateKey,
    KeyNotFound,
    KeyRegistry,
    RegistryError,
    RegistryUnavailable,
)

__all__ = [
    "KEY_PREFIX",
    "NAME_RE",
    "UNATTRIBUTED",
    "Attribution",
    "AttributionError",
    "DuplicateKey",
    "KeyNotFound",
    "KeyRecord",
    "KeyRegistry",
    "KeyResolver",
    "MalformedRecord",
    "RegistryError",
    "RegistryUnavailable",
    "Unattributed",
    "fingerprint",
    "generate_key",
    "hash_key",
    "parse_key_id",
    "validate_attribution",
]
