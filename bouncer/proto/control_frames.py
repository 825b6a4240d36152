"""Framing of the control channel between the workers of one pooler (``workers`` above 1).

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON holding one object.
Sans-IO, as the PostgreSQL framing next to it: bytes in, objects out; the I/O side is
:mod:`bouncer.admin.worker_channel`, which also says what the objects mean.

The peer is another worker of the same pooler over a private socket, but its bytes are still
checked as if hostile: a length above :data:`MAX_FRAME` is refused before anything is
buffered for it, and a body that is not a JSON object is refused too.  After a
:class:`FrameError` the reader is of no further use: the connection is to be closed.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List

from bouncer.proto.codec import UINT32

#: The largest body accepted: SHOW CLIENTS of 100,000 clients fits with room to spare.
MAX_FRAME = 64 * 1024 * 1024
_HEADER = UINT32.size


class FrameError(ValueError):
    """The bytes are not a well-formed frame (oversized, not JSON, not an object)."""


def encode(message: Dict[str, Any]) -> bytes:
    """One frame holding *message*.

    :raises FrameError: *message* does not fit in a frame.
    :raises TypeError: *message* holds something JSON cannot carry.
    """
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes is above the limit of {MAX_FRAME}")
    return UINT32.pack(len(body)) + body


class FrameReader:
    """Collects bytes until whole frames are in; :meth:`feed` returns their objects."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        """The objects of the frames *data* completes, in order (often none).

        :raises FrameError: a length above the limit, or a body that is not a JSON object.
        """
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER:
            (length,) = UINT32.unpack_from(self._buffer)
            if length > self._limit:
                raise FrameError(f"a frame of {length} bytes is above the limit of "
                                 f"{self._limit}")
            if len(self._buffer) < _HEADER + length:
                break
            body = bytes(self._buffer[_HEADER:_HEADER + length])
            del self._buffer[:_HEADER + length]
            messages.append(_decode(body))
        return messages

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet (0 between frames)."""
        return len(self._buffer)


def _decode(body: bytes) -> Dict[str, Any]:
    try:
        message = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise FrameError(f"a frame that is not JSON: {exc}") from None
    except RecursionError:
        raise FrameError("a frame nested too deeply") from None
    if not isinstance(message, dict):
        raise FrameError(f"a frame holding a {type(message).__name__}, not an object")
    return message
