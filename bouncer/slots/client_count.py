"""Client limits across the workers (``max_client_conn``, ``max_db_client_connections``,
``max_user_client_connections``): counts of clients per scope and per worker in a shared file.

Sans-IO as far as the event loop goes (no gevent, no sockets): a file in the supervisor's
private directory, mapped by every worker, is a hash table with one entry per *scope* (all
clients, a database, a user) holding one 64-bit count per worker, written only by that
worker; ``flock`` on it makes "add the counts, compare with the limits, count the client" one
step.  The lock is held for a few microseconds (no I/O inside it), so taking it blocks nobody
for longer than a system call: counting a client in its three scopes costs about 5 µs a login
and 3 µs a disconnect on the 2-core development machine, against some 1,100 µs of pooler CPU
a login costs, where a round trip to the supervisor would cost two context switches and a
wake-up of a busy process per connection of a connection storm.  Every client is counted in
every scope whatever the limits, so that a limit raised from 0 later (RELOAD, SET, SET USER)
counts the clients already there, as in one process.  A client is counted from the check of
its startup packet on: connections that have not sent one yet, which one process counts
towards ``max_client_conn``, are not counted across the workers.

Databases and users appear at run time, hence the hash table: an entry is keyed by 64 bits
of a BLAKE2b hash of its scope (two scopes sharing them, about one chance in 4 billion
with 100,000 of them, would share a count), found by linear probing; an entry whose counts are
all 0 is reused.  The table is rebuilt, without those, when three quarters of it has been
used, twice as large when a quarter of it is still counting someone: whoever rebuilds it
grows the file, and every worker maps it again when the header says so.  A worker that dies
has its counts zeroed by the supervisor before it is restarted.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import mmap
import os
import struct
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

FILE_NAME = "clients"
#: (kind, name): ("clients", "") for all of them, ("database", name), ("user", name).
Scope = Tuple[str, str]
ALL: Scope = ("clients", "")
_HEADER = struct.Struct("=QQQ")  # workers, capacity (entries), entries used since the rebuild
_KEY = struct.Struct("=Q")  # 0: an entry never used
_COUNT = struct.Struct("=q")
_FIRST_CAPACITY = 1024


@functools.lru_cache(maxsize=4096)  # the names of the clients coming and going
def scope_key(scope: Scope) -> int:
    """The 64 bits an entry of *scope* is known by (never 0)."""
    text = f"{scope[0]}\0{scope[1]}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") or 1


def create(directory: str, workers: int) -> str:
    """Make the file for *workers* workers (no client counted); its path."""
    path = os.path.join(directory, FILE_NAME)
    with open(path, "wb") as file:
        file.write(_HEADER.pack(workers, _FIRST_CAPACITY, 0))
        file.truncate(_file_size(workers, _FIRST_CAPACITY))
    return path


def _file_size(workers: int, capacity: int) -> int:
    return _HEADER.size + capacity * (_KEY.size + workers * _COUNT.size)


class ClientCount:
    """One worker's view of the shared counts; *index* is 1 to ``workers``."""

    def __init__(self, path: str, index: int) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, 0)
        self._workers, self._capacity, _ = _HEADER.unpack_from(self._map)
        self._entry = _KEY.size + self._workers * _COUNT.size
        self._mine = _KEY.size + (index - 1) * _COUNT.size  # my count's place in an entry
        self._counts = struct.Struct(f"={self._workers}q")
        #: The scopes each client of this worker is counted in, to uncount it when it leaves.
        self._counted: Dict[Hashable, List[int]] = {}

    def admit(self, client: Hashable, caps: Sequence[Tuple[Scope, int]]) -> Optional[Scope]:
        """Count *client* in each scope of *caps* unless that takes one above its limit (0: no
        limit) across all workers: then the first such scope, and the client is not counted."""
        keys = [scope_key(scope) for scope, _ in caps]
        self._lock()
        try:
            self._make_room(len(keys))
            entries = [self._find_or_add(key) for key in keys]
            for (scope, cap), entry in zip(caps, entries):
                if cap and self._total(entry) >= cap:
                    return scope
            for entry in entries:
                self._step(entry, +1)
        finally:
            self._unlock()
        self._counted[client] = keys
        return None

    def leave(self, client: Hashable) -> None:
        """*client* is gone: uncount it (nothing if it was never counted)."""
        keys = self._counted.pop(client, None)
        if keys:
            self._lock()
            try:
                for key in keys:
                    self._step(self._find(key), -1)
            finally:
                self._unlock()

    def zero(self) -> None:
        """Uncount every client of this worker (it died)."""
        self._lock()
        try:
            for index in range(self._capacity):
                _COUNT.pack_into(self._map, self._offset(index) + self._mine, 0)
        finally:
            self._unlock()

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    # -- the table -------------------------------------------------------------------------

    def _lock(self) -> None:
        """Take the lock (released by :meth:`_unlock`; a generator-based context manager
        would double the cost of a login's count)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        capacity = _HEADER.unpack_from(self._map)[1]
        if capacity != self._capacity:  # another process rebuilt it larger
            self._map.close()
            self._map = mmap.mmap(self._fd, 0)
            self._capacity = capacity

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _offset(self, index: int) -> int:
        return _HEADER.size + index * self._entry

    def _probe(self, key: int) -> Tuple[Optional[int], Optional[int], int]:
        """Where *key*'s entry is (None: it has none), the first reusable entry on its way
        and the unused entry that ends it (:meth:`_make_room` leaves one), as offsets."""
        reusable = None
        index = key % self._capacity
        while True:
            offset = self._offset(index)
            found = _KEY.unpack_from(self._map, offset)[0]
            if found == key or not found:
                return (offset if found else None), reusable, offset
            if reusable is None and not self._total(offset):
                reusable = offset
            index = (index + 1) % self._capacity

    def _find(self, key: int) -> int:
        """The offset of the entry of *key*, which a client counted in it keeps."""
        found, _, _ = self._probe(key)
        assert found is not None
        return found

    def _find_or_add(self, key: int) -> int:
        found, reusable, unused = self._probe(key)
        if found is not None:
            return found
        if reusable is None:
            reusable = unused
            self._set_used(self._used() + 1)
        _KEY.pack_into(self._map, reusable, key)
        return reusable

    def _total(self, entry: int) -> int:
        return sum(self._counts.unpack_from(self._map, entry + _KEY.size))

    def _step(self, entry: int, step: int) -> None:
        offset = entry + self._mine
        _COUNT.pack_into(self._map, offset, _COUNT.unpack_from(self._map, offset)[0] + step)

    def _used(self) -> int:
        return int(_HEADER.unpack_from(self._map)[2])

    def _set_used(self, used: int) -> None:
        _HEADER.pack_into(self._map, 0, self._workers, self._capacity, used)

    def _make_room(self, new: int) -> None:
        """Rebuild the table if *new* entries could take it past three quarters used."""
        if (self._used() + new) * 4 <= self._capacity * 3:
            return
        live = [bytes(self._map[offset:offset + self._entry])
                for offset in map(self._offset, range(self._capacity))
                if _KEY.unpack_from(self._map, offset)[0] and self._total(offset)]
        capacity = self._capacity
        while (len(live) + new) * 4 > capacity:  # a quarter at most, after the new ones
            capacity *= 2
        if capacity != self._capacity:
            self._capacity = capacity
            self._map.close()
            os.ftruncate(self._fd, _file_size(self._workers, capacity))
            self._map = mmap.mmap(self._fd, 0)
        self._map[_HEADER.size:] = bytes(len(self._map) - _HEADER.size)
        self._set_used(0)
        for entry in live:
            offset = self._find_or_add(_KEY.unpack_from(entry)[0])
            self._map[offset:offset + self._entry] = entry


def reset(path: str, index: int) -> None:
    """Worker *index* died: its clients are gone (the supervisor calls this)."""
    count = ClientCount(path, index)
    try:
        count.zero()
    finally:
        count.close()
