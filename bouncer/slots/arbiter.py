"""The supervisor's end of the slot channels: one per worker, all feeding one
:class:`~bouncer.slots.table.SlotTable`.  The design is in :mod:`bouncer.slots`."""
from __future__ import annotations

import itertools
import logging
import socket
from typing import Dict

import gevent

from bouncer.slots import client_count
from bouncer.slots.channel import Channel, serve
from bouncer.slots.messages import Announce, Ask, Cancel, Message, Release, pool_key
from bouncer.slots.table import Outgoing, SlotTable

log = logging.getLogger(__name__)


class Arbiter:
    """Grants server-connection slots to the workers; keeps their shared client count."""

    def __init__(self, directory: str, workers: int) -> None:
        self.table = SlotTable()
        #: By channel, not by worker index: a restarted worker's new channel may open before
        #: the old one's end-of-file is handled, and must not lose its slots to it.
        self._channels: Dict[int, Channel] = {}
        self._ids = itertools.count(1)
        self.client_file = client_count.create(directory, workers)

    def open_channel(self, index: int) -> socket.socket:
        """A new channel for worker *index*, about to be started (any earlier process of it
        has exited): the worker's end, which the caller passes to it and then closes.  When
        the worker's end closes, its slots come back."""
        client_count.reset(self.client_file, index)  # its clients went with the last process
        ours, theirs = socket.socketpair()
        channel_id = next(self._ids)
        channel = self._channels[channel_id] = Channel(ours)
        gevent.spawn(self._serve, channel_id, channel, index)
        return theirs

    def _serve(self, channel_id: int, channel: Channel, index: int) -> None:
        serve(channel, lambda message: self._deliver(self._handle(channel_id, message)),
              f"worker {index}")
        del self._channels[channel_id]
        held = sum(self.table.held.get(channel_id, {}).values())
        if held:
            log.info("worker %d gone: %d server slot(s) returned", index, held)
        self._deliver(self.table.worker_gone(channel_id))

    def _handle(self, channel_id: int, message: Message) -> Outgoing:
        table = self.table
        if isinstance(message, Ask):
            return table.ask(channel_id, message)
        if isinstance(message, Release):
            return table.release(channel_id, pool_key(message))
        if isinstance(message, Cancel):
            return table.cancel(channel_id, message.request)
        if isinstance(message, Announce):
            return table.announce(channel_id, message)
        raise ValueError(f"not a worker's message: {type(message).__name__}")

    def _deliver(self, outgoing: Outgoing) -> None:
        for channel_id, message in outgoing:
            channel = self._channels.get(channel_id)
            if channel is not None:
                channel.send(message)
