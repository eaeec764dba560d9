from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar
from typing import Optional as _Optional
from typing import Union as _Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class RoundRef(_message.Message):
    __slots__ = ("client_id", "round", "task_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    task_id: str
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("aborted", "reason")
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    aborted: bool
    reason: str
    def __init__(self, aborted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SetupReply(_message.Message):
    __slots__ = ("status", "vector_length", "clip_range", "quant_range", "modulus_bits", "threshold", "neighbours")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    QUANT_RANGE_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    status: Status
    vector_length: int
    clip_range: float
    quant_range: int
    modulus_bits: int
    threshold: int
    neighbours: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., vector_length: _Optional[int] = ..., clip_range: _Optional[float] = ..., quant_range: _Optional[int] = ..., modulus_bits: _Optional[int] = ..., threshold: _Optional[int] = ..., neighbours: _Optional[_Iterable[int]] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("ref", "enc_public", "mask_public")
    REF_FIELD_NUMBER: _ClassVar[int]
    ENC_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    enc_public: bytes
    mask_public: bytes
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., enc_public: _Optional[bytes] = ..., mask_public: _Optional[bytes] = ...) -> None: ...

class ClientKeys(_message.Message):
    __slots__ = ("client_id", "enc_public", "mask_public")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENC_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    enc_public: bytes
    mask_public: bytes
    def __init__(self, client_id: _Optional[int] = ..., enc_public: _Optional[bytes] = ..., mask_public: _Optional[bytes] = ...) -> None: ...

class PublicKeysReply(_message.Message):
    __slots__ = ("status", "keys")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    status: Status
    keys: _containers.RepeatedCompositeFieldContainer[ClientKeys]
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., keys: _Optional[_Iterable[_Union[ClientKeys, _Mapping]]] = ...) -> None: ...

class Ciphertext(_message.Message):
    __slots__ = ("client_id", "data")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    data: bytes
    def __init__(self, client_id: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("ref", "ciphertexts")
    REF_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    ciphertexts: _containers.RepeatedCompositeFieldContainer[Ciphertext]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., ciphertexts: _Optional[_Iterable[_Union[Ciphertext, _Mapping]]] = ...) -> None: ...

class ForwardedSharesReply(_message.Message):
    __slots__ = ("status", "ciphertexts")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    status: Status
    ciphertexts: _containers.RepeatedCompositeFieldContainer[Ciphertext]
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., ciphertexts: _Optional[_Iterable[_Union[Ciphertext, _Mapping]]] = ...) -> None: ...

class MaskedHeader(_message.Message):
    __slots__ = ("ref", "length")
    REF_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    length: int
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., length: _Optional[int] = ...) -> None: ...

class MaskedChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class MaskedMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: MaskedHeader
    chunk: MaskedChunk
    def __init__(self, header: _Optional[_Union[MaskedHeader, _Mapping]] = ..., chunk: _Optional[_Union[MaskedChunk, _Mapping]] = ...) -> None: ...

class UnmaskRequestReply(_message.Message):
    __slots__ = ("status", "survivors")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    status: Status
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("client_id", "value")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    value: bytes
    def __init__(self, client_id: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("ref", "self_mask_shares", "key_shares")
    REF_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[Share]
    key_shares: _containers.RepeatedCompositeFieldContainer[Share]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., self_mask_shares: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[Share, _Mapping]]] = ...) -> None: ...

class UnmaskReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: Status
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...
