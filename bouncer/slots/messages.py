"""The messages of the slot channel between a worker and the supervisor, and their framing.

Sans-IO, in h11's manner: :class:`FrameReader` takes bytes and gives messages, :func:`encode`
takes a message and gives bytes; no socket, no gevent, so hostile bytes are tested directly.

A frame has PostgreSQL's shape: a type byte, a 4-byte big-endian length that counts itself,
then the message's fields in order, each a NUL-terminated UTF-8 string (numbers in decimal,
booleans as ``0`` or ``1``).  Database and user names never hold a NUL: PostgreSQL's startup
packet cannot carry one.  What a worker sends names limits as ``0`` = unlimited.
"""
from __future__ import annotations

import dataclasses
import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Tuple, Type, Union

#: A frame larger than this is a protocol error (two names of a few hundred bytes fit easily).
MAX_FRAME = 8192
#: Request ids and counts are at most this (a corrupted number must not become a huge one).
MAX_NUMBER = 2**31 - 1
_HEADER = struct.Struct("!cI")
_NUMBER = re.compile(rb"(?:0|[1-9][0-9]{0,9})\Z")

PoolKey = Tuple[str, str]  # (database, user)


class ChannelError(ValueError):
    """The peer sent bytes that are not a valid message: the channel is unusable."""


# -- worker to supervisor ------------------------------------------------------------------------

@dataclass(frozen=True)
class Ask:
    """May the worker open one more server connection for the pool (*database*, *user*)?
    The limits are those the worker applies now; 0 = unlimited.  Without *wait* (nobody
    waits for the connection: it is for *min_pool_size*, which the pool keeps across the
    workers), a refusal is an answer, not a queue, and a Refill follows when the connection
    would be granted."""
    KIND: ClassVar[bytes] = b"A"
    request: int
    database: str
    user: str
    pool_size: int
    max_db_connections: int
    max_user_connections: int
    min_pool_size: int
    wait: bool


@dataclass(frozen=True)
class Cancel:
    """The worker no longer wants the slot it asked for (its waiting clients left)."""
    KIND: ClassVar[bytes] = b"C"
    request: int


@dataclass(frozen=True)
class Release:
    """A server connection of the pool closed: its slot is free."""
    KIND: ClassVar[bytes] = b"R"
    database: str
    user: str


@dataclass(frozen=True)
class Announce:
    """The limits of a pool changed on this worker (RELOAD, SET, SET USER, SET POOL)."""
    KIND: ClassVar[bytes] = b"L"
    database: str
    user: str
    pool_size: int
    max_db_connections: int
    max_user_connections: int


# -- supervisor to worker ------------------------------------------------------------------------

@dataclass(frozen=True)
class Granted:
    """The slot asked for is the worker's: it opens the connection (or, if it withdrew the
    request meanwhile, releases the slot: the pool is named for that)."""
    KIND: ClassVar[bytes] = b"G"
    request: int
    database: str
    user: str


@dataclass(frozen=True)
class Queued:
    """No slot now: *limit* is reached across the workers; a Granted follows when one frees
    (a Refill if the Ask did not *wait*, whose *limit* may be ``min_pool_size``: the pool
    has that many servers across the workers already)."""
    KIND: ClassVar[bytes] = b"Q"
    request: int
    limit: str


@dataclass(frozen=True)
class Shrink:
    """Keep at most *target* server connections within the scope of *limit* (the pool for
    ``pool_size``, its database for ``max_db_connections``, its user for
    ``max_user_connections``): idle ones close now, busy ones when released, and, when
    *forced*, after ``limit_shrink_timeout`` (a lowered limit) rather than never."""
    KIND: ClassVar[bytes] = b"S"
    limit: str
    database: str
    user: str
    target: int
    reason: str
    forced: bool


@dataclass(frozen=True)
class Refill:
    """A connection for ``min_pool_size`` of the pool, refused to the worker before, would be
    granted now (a server of the pool closed, a worker died): the worker may ask again."""
    KIND: ClassVar[bytes] = b"F"
    database: str
    user: str


Message = Union[Ask, Cancel, Release, Announce, Granted, Queued, Shrink, Refill]
_KINDS: Dict[bytes, Type[Any]] = {cls.KIND: cls for cls in (
    Ask, Cancel, Release, Announce, Granted, Queued, Shrink, Refill)}


def pool_key(message: Union[Ask, Release, Announce, Granted, Shrink, Refill]) -> PoolKey:
    return message.database, message.user


def encode(message: Message) -> bytes:
    """The frame of *message*."""
    payload = b"".join(_encode_field(getattr(message, field.name)) + b"\0"
                       for field in dataclasses.fields(message))
    return _HEADER.pack(message.KIND, len(payload) + 4) + payload


def _encode_field(value: Union[int, str, bool]) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode()
    return value.encode()


class FrameReader:
    """Frames in, messages out; after a :class:`ChannelError` it refuses everything."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> List[Message]:
        """The messages completed by *data* (bytes of a partial one are kept).

        :raises ChannelError: the bytes are not a valid frame.
        """
        if self._broken:
            raise ChannelError("channel already failed")
        self._buffer += data
        messages = []
        try:
            while len(self._buffer) >= _HEADER.size:
                kind, length = _HEADER.unpack_from(self._buffer)
                if kind not in _KINDS or not _HEADER.size - 1 <= length <= MAX_FRAME:
                    raise ChannelError(f"bad frame header: type {kind!r}, length {length}")
                if len(self._buffer) < length + 1:
                    break
                payload = bytes(self._buffer[_HEADER.size:length + 1])
                del self._buffer[:length + 1]
                messages.append(decode(_KINDS[kind], payload))
        except ChannelError:
            self._broken = True
            raise
        return messages


def decode(cls: Type[Any], payload: bytes) -> Message:
    """A message of type *cls* from its fields.

    :raises ChannelError: not the right number of fields, or a field of the wrong form.
    """
    fields = dataclasses.fields(cls)
    if not payload.endswith(b"\0") or payload.count(b"\0") != len(fields):
        raise ChannelError(f"{cls.__name__}: expected {len(fields)} fields")
    raw = payload[:-1].split(b"\0")
    return cls(*(_decode_field(field.type, value, cls.__name__)
                 for field, value in zip(fields, raw)))


def _decode_field(kind: Any, raw: bytes, message: str) -> Union[int, str, bool]:
    if kind == "bool":
        if raw not in (b"0", b"1"):
            raise ChannelError(f"{message}: not a boolean: {raw[:20]!r}")
        return raw == b"1"
    if kind == "int":
        if not _NUMBER.match(raw) or int(raw) > MAX_NUMBER:
            raise ChannelError(f"{message}: not a count: {raw[:20]!r}")
        return int(raw)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ChannelError(f"{message}: not UTF-8: {raw[:20]!r}") from None
