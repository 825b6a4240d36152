"""The I/O of the slot channel: a unix socketpair end read by one greenlet and written by
another, so a slow reader at the far end never blocks whoever sends (and two senders never
interleave the bytes of their frames).  The design is in :mod:`bouncer.slots`."""
from __future__ import annotations

import logging
import socket
from typing import Callable, Iterator, Optional

import gevent
from gevent.queue import Queue

from bouncer.slots.messages import ChannelError, FrameReader, Message, encode

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_STOP = None


class Channel:
    """Messages over *sock*; closed by :meth:`close` or when the peer's end closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._outgoing: "Queue[Optional[bytes]]" = Queue()
        self._writer = gevent.spawn(self._write)

    def send(self, message: Message) -> None:
        """Queue *message*; dropped if the channel is closed (the peer is gone)."""
        if not self.closed:
            self._outgoing.put(encode(message))

    def messages(self) -> Iterator[Message]:
        """Each message the peer sends, until it closes its end.

        :raises ChannelError: the peer sent bytes that are no message.
        """
        reader = FrameReader()
        while not self.closed:
            try:
                data = self.sock.recv(_READ_SIZE)
            except OSError as err:
                log.warning("slot channel: %s", err)
                return
            if not data:
                return
            yield from reader.feed(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._outgoing.put(_STOP)

    def _write(self) -> None:
        try:
            for frame in iter(self._outgoing.get, _STOP):
                self.sock.sendall(frame)
        except OSError:
            self.closed = True  # the reader sees the end too, and says so
        finally:
            self.sock.close()


def serve(channel: Channel, handle: Callable[[Message], None], what: str) -> None:
    """Hand each message of *channel* to *handle* until the peer closes; a malformed message
    ends the channel (logged, naming *what*)."""
    try:
        for message in channel.messages():
            handle(message)
    except (ChannelError, ValueError) as err:
        log.error("%s sent a bad slot message, closing its channel: %s", what, err)
    finally:
        channel.close()
