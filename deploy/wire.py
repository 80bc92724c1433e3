"""The message format between node processes: a length-prefixed frame of raw tensor bytes.

A frame is ``u64 length`` followed by the message: a fixed header (magic, kind, request id, a
float, the channel state a split policy chose for the request, number of tensors), one small
descriptor per tensor (dtype, shape, byte count), then the tensors' bytes as they are in
memory. Nothing is pickled, so an 8-bit activation crosses a link as one byte per element plus
a few dozen bytes of header. :func:`frame_overhead_bytes` gives those
header bytes, which the calibrated simulation adds to each transfer.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.split import Payload

__all__ = [
    "DATA",
    "END",
    "START",
    "Message",
    "decode_payload",
    "encode",
    "frame_overhead_bytes",
    "parse_frame",
    "payload_tensors",
    "recv_message",
]

DATA, START, END = 0, 1, 2
_MAGIC = b"JMS2"
_HEAD = struct.Struct("!4sBQdBB")  # magic, kind, request id, value, state, tensors
_LEN = struct.Struct("!Q")
_TENSOR = struct.Struct("!BBQ")  # dtype code, ndim, bytes
_DIM = struct.Struct("!I")
_DTYPES = [torch.float32, torch.uint8, torch.float16, torch.float64, torch.int64]
_CODE = {dt: i for i, dt in enumerate(_DTYPES)}


@dataclass
class Message:
    """``value``: the run's origin for START; for DATA, the propagation delay of the link the
    frame crosses (the receiver holds the frame that long). ``state``: the channel state whose
    split the request follows (0 for a static design; set by the first node)."""

    kind: int
    request: int = 0
    value: float = 0.0
    tensors: tuple[Tensor, ...] = ()
    state: int = 0


def payload_tensors(payload: Payload) -> tuple[Tensor, ...]:
    """A segment's output as the tensors that travel: one tensor, or (uint8, scale, minimum)."""
    return tuple(payload) if isinstance(payload, tuple) else (payload,)


def decode_payload(tensors: tuple[Tensor, ...]) -> Payload:
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) == 3:
        return (tensors[0], tensors[1], tensors[2])
    raise ValueError(f"a payload has 1 or 3 tensors, got {len(tensors)}")


def encode(message: Message) -> bytes:
    """The whole frame (length prefix included), ready to send."""
    parts = [_HEAD.pack(_MAGIC, message.kind, message.request, message.value, message.state,
                        len(message.tensors))]
    blobs = []
    for t in message.tensors:
        if t.dtype not in _CODE:
            raise ValueError(f"cannot send a {t.dtype} tensor (allowed: {_DTYPES})")
        arr = t.detach().contiguous().cpu().numpy()
        blob = arr.tobytes()
        parts.append(_TENSOR.pack(_CODE[t.dtype], arr.ndim, len(blob)))
        parts.extend(_DIM.pack(d) for d in arr.shape)
        blobs.append(blob)
    body = b"".join(parts + blobs)
    return _LEN.pack(len(body)) + body


def frame_overhead_bytes(payload: Payload) -> int:
    """Bytes of a frame beyond the tensors' own bytes (prefix, header, descriptors)."""
    tensors = payload_tensors(payload)
    return _LEN.size + _HEAD.size + sum(_TENSOR.size + _DIM.size * t.dim() for t in tensors)


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return buf


def recv_message(sock: socket.socket) -> Message | None:
    """The next message, or None when the peer closed the connection between messages."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (length,) = _LEN.unpack(head)
    body = _recv_exact(sock, length)
    if body is None:
        raise ConnectionError("connection closed in the middle of a message")
    return _parse(body)


def parse_frame(frame: bytes) -> Message:
    """A whole frame (length prefix included) back into its message (the tensors are copies)."""
    (length,) = _LEN.unpack_from(frame, 0)
    if length != len(frame) - _LEN.size:
        raise ValueError(f"a frame of {len(frame)} bytes announces {length} + {_LEN.size}")
    return _parse(bytearray(frame[_LEN.size:]))


def _parse(body: bytearray) -> Message:
    magic, kind, request, value, state, count = _HEAD.unpack_from(body, 0)
    if magic != _MAGIC:
        raise ConnectionError("not a JMSNAS frame")
    offset = _HEAD.size
    descs = []
    for _ in range(count):
        code, ndim, nbytes = _TENSOR.unpack_from(body, offset)
        offset += _TENSOR.size
        shape = tuple(_DIM.unpack_from(body, offset + _DIM.size * i)[0] for i in range(ndim))
        offset += _DIM.size * ndim
        descs.append((code, shape, nbytes))
    tensors = []
    for code, shape, nbytes in descs:
        dtype = _DTYPES[code]
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        arr = np.frombuffer(body, dtype=np_dtype, count=nbytes // np_dtype.itemsize,
                            offset=offset).reshape(shape)
        tensors.append(torch.from_numpy(arr))
        offset += nbytes
    return Message(kind, request, value, tuple(tensors), state)
