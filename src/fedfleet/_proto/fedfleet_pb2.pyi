from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar
from typing import Optional as _Optional
from typing import Union as _Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class TensorInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("tensor", "offset", "data")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    tensor: int
    offset: int
    data: bytes
    def __init__(self, tensor: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("f", "i", "s", "b")
    F_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    f: float
    i: int
    s: str
    b: bool
    def __init__(self, f: _Optional[float] = ..., i: _Optional[int] = ..., s: _Optional[str] = ..., b: _Optional[bool] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("client_id", "layout_fingerprint", "num_samples", "num_test_samples")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    layout_fingerprint: str
    num_samples: int
    num_test_samples: int
    def __init__(self, client_id: _Optional[int] = ..., layout_fingerprint: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_test_samples: _Optional[int] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("ok", "message", "layout_fingerprint", "client_id")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    layout_fingerprint: str
    client_id: int
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., client_id: _Optional[int] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    def __init__(self, client_id: _Optional[int] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("kind", "round", "seed", "task_id", "layout_fingerprint", "epochs", "batch_size", "lr", "max_steps", "config", "tensors", "message", "applied_round")
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
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_ROUND_FIELD_NUMBER: _ClassVar[int]
    kind: TaskHeader.Kind
    round: int
    seed: int
    task_id: str
    layout_fingerprint: str
    epochs: int
    batch_size: int
    lr: float
    max_steps: int
    config: _containers.MessageMap[str, Scalar]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    message: str
    applied_round: int
    def __init__(self, kind: _Optional[_Union[TaskHeader.Kind, str]] = ..., round: _Optional[int] = ..., seed: _Optional[int] = ..., task_id: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., max_steps: _Optional[int] = ..., config: _Optional[_Mapping[str, Scalar]] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., message: _Optional[str] = ..., applied_round: _Optional[int] = ...) -> None: ...

class TaskMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("client_id", "round", "task_id", "layout_fingerprint", "num_samples", "num_steps", "metrics", "tensors")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    task_id: str
    layout_fingerprint: str
    num_samples: int
    num_steps: int
    metrics: _containers.ScalarMap[str, float]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_steps: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("client_id", "round", "task_id", "num_samples", "loss", "accuracy", "personalized", "global_loss", "global_accuracy")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    task_id: str
    num_samples: int
    loss: float
    accuracy: float
    personalized: bool
    global_loss: float
    global_accuracy: float
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., num_samples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., personalized: _Optional[bool] = ..., global_loss: _Optional[float] = ..., global_accuracy: _Optional[float] = ...) -> None: ...

class EvaluationReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
