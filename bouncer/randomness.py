"""Random bytes for every login (the md5 salt, the cancel key), drawn from the OS in batches.

A login asked the kernel for random bytes three times, 4 bytes each: in a connection storm,
system calls that PgBouncer's logins partly do without.  These bytes are the kernel's, as
``os.urandom`` gives them, only fetched 4 KiB at a time and kept in memory until they are
used, as the salts and keys they become are kept anyway.  A forked child (a worker) starts
with a batch of its own: two processes must never hand out the same bytes.
"""
from __future__ import annotations

import os

_BATCH = 4096

_batch = b""
_used = 0


def random_bytes(count: int) -> bytes:
    """*count* bytes from the OS's cryptographically secure generator."""
    global _batch, _used
    if _used + count > len(_batch):
        _batch, _used = os.urandom(max(_BATCH, count)), 0
    start, _used = _used, _used + count
    return _batch[start:_used]


def _forget_batch() -> None:
    global _batch, _used
    _batch, _used = b"", 0


os.register_at_fork(after_in_child=_forget_batch)
