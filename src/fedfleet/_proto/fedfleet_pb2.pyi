from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Chunk(_message.Message):
    __slots__ = ("tensor", "offset", "data")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    tensor: int
    offset: int
    data: bytes
    def __init__(self, tensor: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("client_id", "layout_fingerprint", "num_samples", "num_test_samples", "protocol_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    layout_fingerprint: str
    num_samples: int
    num_test_samples: int
    protocol_version: int
    def __init__(self, client_id: _Optional[int] = ..., layout_fingerprint: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_test_samples: _Optional[int] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("ok", "message", "layout_fingerprint", "client_id", "protocol_version")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    layout_fingerprint: str
    client_id: int
    protocol_version: int
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., client_id: _Optional[int] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    def __init__(self, client_id: _Optional[int] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("kind", "round", "task_id", "layout_fingerprint", "message", "applied_round", "job")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAIT: _ClassVar[TaskHeader.Kind]
        TRAIN: _ClassVar[TaskHeader.Kind]
        DONE: _ClassVar[TaskHeader.Kind]
        EVALUATE: _ClassVar[TaskHeader.Kind]
    WAIT: TaskHeader.Kind
    TRAIN: TaskHeader.Kind
    DONE: TaskHeader.Kind
    EVALUATE: TaskHeader.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_ROUND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    kind: TaskHeader.Kind
    round: int
    task_id: str
    layout_fingerprint: str
    message: str
    applied_round: int
    job: bytes
    def __init__(self, kind: _Optional[_Union[TaskHeader.Kind, str]] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., message: _Optional[str] = ..., applied_round: _Optional[int] = ..., job: _Optional[bytes] = ...) -> None: ...

class TaskMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("client_id", "round", "task_id", "layout_fingerprint", "reply")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    task_id: str
    layout_fingerprint: str
    reply: bytes
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., reply: _Optional[bytes] = ...) -> None: ...

class UpdateMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UpdateReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class EvaluationResult(_message.Message):
    __slots__ = ("client_id", "round", "task_id", "report")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    task_id: str
    report: bytes
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., report: _Optional[bytes] = ...) -> None: ...

class EvaluationReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
