"""The message format between node processes: a length-prefixed frame of raw tensor bytes.

A frame is ``u64 length`` followed by the message: a fixed header (magic, kind, request id, a
float, the channel state a split policy chose for the request, number of tensors), one small
descriptor per tensor (dtype, shape, byte count), then the tensors' bytes as they are in
memory. Nothing is pickled, so an 8-bit activation crosses a link as one byte per element plus
a few dozen bytes of header. :func:`frame_overhead_bytes` gives those
header bytes, which the calibrated simulation adds to each transfer.
"""

from __future__ import annotations

import math
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
    "MAX_FRAME_BYTES",
    "START",
    "FrameError",
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
_NP_DTYPES = [torch.empty(0, dtype=dt).numpy().dtype for dt in _DTYPES]
_ITEMSIZE = [dt.itemsize for dt in _NP_DTYPES]


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


class FrameError(ConnectionError):
    """A frame that is not a valid JMSNAS frame, or larger than the receiver accepts; the
    receiver closes that connection."""


MAX_FRAME_BYTES = 256 * 2**20
"""The default bound on a frame's announced size (a node sets its own from its segments)."""
_MAX_TENSORS, _MAX_NDIM = 3, 8


def recv_message(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> Message | None:
    """The next message, or None when the peer closed the connection between messages. A
    frame announcing more than ``max_bytes`` is refused before anything is allocated for it;
    a malformed one raises :class:`FrameError`."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (length,) = _LEN.unpack(head)
    if length > max_bytes:
        raise FrameError(f"a frame announces {length} bytes (at most {max_bytes})")
    if length < _HEAD.size:
        raise FrameError(f"a frame of {length} bytes is shorter than the header")
    body = _recv_exact(sock, length)
    if body is None:
        raise ConnectionError("connection closed in the middle of a message")
    return _parse(body)


def parse_frame(frame: bytes) -> Message:
    """A whole frame (length prefix included) back into its message (the tensors are copies)."""
    if len(frame) < _LEN.size:
        raise FrameError("a frame shorter than its length prefix")
    (length,) = _LEN.unpack_from(frame, 0)
    if length != len(frame) - _LEN.size:
        raise FrameError(f"a frame of {len(frame)} bytes announces {length} + {_LEN.size}")
    return _parse(bytearray(frame[_LEN.size:]))


def _parse(body: bytearray) -> Message:
    """The message in ``body``, every field checked against the frame's own size before a
    tensor is made: kind, state, tensor count, dtype codes, ranks, and byte counts that equal
    the shapes' and add up to the frame."""
    if len(body) < _HEAD.size:
        raise FrameError(f"a frame of {len(body)} bytes is shorter than the header")
    magic, kind, request, value, state, count = _HEAD.unpack_from(body, 0)
    if magic != _MAGIC:
        raise FrameError("not a JMSNAS frame (bad magic)")
    if kind not in (DATA, START, END):
        raise FrameError(f"unknown frame kind {kind}")
    if count > _MAX_TENSORS or (kind != DATA and count):
        raise FrameError(f"a {('DATA', 'START', 'END')[kind]} frame with {count} tensors")
    if not np.isfinite(value):
        raise FrameError("a frame's value is not finite")
    offset = _HEAD.size
    descs = []
    for _ in range(count):
        if offset + _TENSOR.size > len(body):
            raise FrameError("a frame ends inside a tensor descriptor")
        code, ndim, nbytes = _TENSOR.unpack_from(body, offset)
        offset += _TENSOR.size
        if code >= len(_DTYPES) or ndim > _MAX_NDIM:
            raise FrameError(f"a tensor of dtype code {code} and rank {ndim} (allowed: codes "
                             f"< {len(_DTYPES)}, rank <= {_MAX_NDIM})")
        if offset + _DIM.size * ndim > len(body):
            raise FrameError("a frame ends inside a tensor's shape")
        shape = tuple(_DIM.unpack_from(body, offset + _DIM.size * i)[0] for i in range(ndim))
        offset += _DIM.size * ndim
        itemsize = _ITEMSIZE[code]
        if nbytes != itemsize * math.prod(shape):
            raise FrameError(f"a tensor of shape {shape} announces {nbytes} bytes")
        descs.append((code, shape, nbytes))
    if offset + sum(d[2] for d in descs) != len(body):
        raise FrameError(f"a frame's tensors do not fill its {len(body)} bytes")
    tensors = []
    for code, shape, nbytes in descs:
        np_dtype = _NP_DTYPES[code]
        arr = np.frombuffer(body, dtype=np_dtype, count=nbytes // np_dtype.itemsize,
                            offset=offset).reshape(shape)
        tensors.append(torch.from_numpy(arr))
        offset += nbytes
    return Message(kind, request, value, tuple(tensors), state)
