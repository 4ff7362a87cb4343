from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Attribution(_message.Message):
    __slots__ = ("owner", "team", "agent", "workload")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    owner: str
    team: str
    agent: str
    workload: str
    def __init__(self, owner: _Optional[str] = ..., team: _Optional[str] = ..., agent: _Optional[str] = ..., workload: _Optional[str] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("key_id", "attribution", "status", "kind", "created_at", "created_by", "expires_at", "budget_daily_usd", "budget_monthly_usd", "upstream_credential_ref", "provider")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_DAILY_USD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MONTHLY_USD_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CREDENTIAL_REF_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    attribution: Attribution
    status: str
    kind: str
    created_at: str
    created_by: str
    expires_at: str
    budget_daily_usd: float
    budget_monthly_usd: float
    upstream_credential_ref: str
    provider: str
    def __init__(self, key_id: _Optional[str] = ..., attribution: _Optional[_Union[Attribution, _Mapping]] = ..., status: _Optional[str] = ..., kind: _Optional[str] = ..., created_at: _Optional[str] = ..., created_by: _Optional[str] = ..., expires_at: _Optional[str] = ..., budget_daily_usd: _Optional[float] = ..., budget_monthly_usd: _Optional[float] = ..., upstream_credential_ref: _Optional[str] = ..., provider: _Optional[str] = ...) -> None: ...

class IssueKeyRequest(_message.Message):
    __slots__ = ("attribution", "expires_at", "budget_daily_usd", "budget_monthly_usd", "upstream_credential_ref", "created_by")
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_DAILY_USD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MONTHLY_USD_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CREDENTIAL_REF_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    attribution: Attribution
    expires_at: str
    budget_daily_usd: float
    budget_monthly_usd: float
    upstream_credential_ref: str
    created_by: str
    def __init__(self, attribution: _Optional[_Union[Attribution, _Mapping]] = ..., expires_at: _Optional[str] = ..., budget_daily_usd: _Optional[float] = ..., budget_monthly_usd: _Optional[float] = ..., upstream_credential_ref: _Optional[str] = ..., created_by: _Optional[str] = ...) -> None: ...

class IssueKeyResponse(_message.Message):
    __slots__ = ("key", "info")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    key: str
    info: KeyInfo
    def __init__(self, key: _Optional[str] = ..., info: _Optional[_Union[KeyInfo, _Mapping]] = ...) -> None: ...

class ImportKeyRequest(_message.Message):
    __slots__ = ("provider_key", "provider", "attribution", "created_by")
    PROVIDER_KEY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    provider_key: str
    provider: str
    attribution: Attribution
    created_by: str
    def __init__(self, provider_key: _Optional[str] = ..., provider: _Optional[str] = ..., attribution: _Optional[_Union[Attribution, _Mapping]] = ..., created_by: _Optional[str] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id", "revoked_by")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    revoked_by: str
    def __init__(self, key_id: _Optional[str] = ..., revoked_by: _Optional[str] = ...) -> None: ...
