"""One codec for what crosses between the round loop and where clients run.

The process pool's pipes, Ray tasks and the gRPC network all carry the same messages, encoded
and decoded by the same functions (:mod:`fedfleet._codec._messages`): a round's jobs (the fit
instructions with their payload vectors, the seed, a simulated client's state and data), a
client's reply (trained vector, sample and step counts, metrics, extra uploads, new client
state) and a federated-evaluation report. A message is a JSON header plus raw little-endian
arrays (:mod:`fedfleet._codec._frame`); the process pool and Ray send it as one frame of bytes,
gRPC as a protobuf envelope holding the header followed by the arrays in chunks
(:mod:`fedfleet.net._wire`). So a field added here travels everywhere.

No pickle: a header can declare only numeric arrays, every declared size is checked before
anything is allocated, and decoding refuses missing, unknown and mistyped fields with the
sender's name and the field's path.

Below both ``fedfleet.sim`` and ``fedfleet.net``; it imports neither.
"""

from fedfleet._codec._frame import (
    ArrayReceiver,
    ArraySpec,
    CodecError,
    Header,
    Message,
    decode_header,
    encode_header,
    from_frame,
    to_frame,
)
from fedfleet._codec._messages import (
    Job,
    decode_evaluation,
    decode_jobs,
    decode_results,
    encode_error,
    encode_evaluation,
    encode_jobs,
    encode_results,
)

__all__ = [
    "ArrayReceiver",
    "ArraySpec",
    "CodecError",
    "Header",
    "Job",
    "Message",
    "decode_evaluation",
    "decode_header",
    "decode_jobs",
    "decode_results",
    "encode_error",
    "encode_evaluation",
    "encode_header",
    "encode_jobs",
    "encode_results",
    "from_frame",
    "to_frame",
]
