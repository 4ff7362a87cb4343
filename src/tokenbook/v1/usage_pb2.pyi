from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenCounts(_message.Message):
    __slots__ = ("input", "cached_input", "cache_write", "output", "reasoning")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    input: int
    cached_input: int
    cache_write: int
    output: int
    reasoning: int
    def __init__(self, input: _Optional[int] = ..., cached_input: _Optional[int] = ..., cache_write: _Optional[int] = ..., output: _Optional[int] = ..., reasoning: _Optional[int] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("request_id", "time", "key_id", "owner", "team", "agent", "workload", "provider", "model", "tokens", "cost_usd", "outcome", "source")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    time: str
    key_id: str
    owner: str
    team: str
    agent: str
    workload: str
    provider: str
    model: str
    tokens: TokenCounts
    cost_usd: float
    outcome: str
    source: str
    def __init__(self, request_id: _Optional[str] = ..., time: _Optional[str] = ..., key_id: _Optional[str] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ..., agent: _Optional[str] = ..., workload: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., tokens: _Optional[_Union[TokenCounts, _Mapping]] = ..., cost_usd: _Optional[float] = ..., outcome: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...
