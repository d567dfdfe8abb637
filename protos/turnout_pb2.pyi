from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RewardRequest(_message.Message):
    __slots__ = ("model_name", "request_id", "reward")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    request_id: str
    reward: float
    def __init__(self, model_name: _Optional[str] = ..., request_id: _Optional[str] = ..., reward: _Optional[float] = ...) -> None: ...

class RewardResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "request_id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    request_id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
