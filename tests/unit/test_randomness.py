"""Random bytes drawn in batches: each call gets bytes of its own, and so does a forked child."""
from __future__ import annotations

import os

from bouncer import randomness
from bouncer.randomness import random_bytes


def test_calls_get_the_count_asked_for_and_never_the_same_bytes() -> None:
    drawn = [random_bytes(8) for _ in range(2000)]  # past one batch
    assert all(len(chunk) == 8 for chunk in drawn)
    assert len(set(drawn)) == len(drawn)


def test_a_count_larger_than_a_batch_is_served_whole() -> None:
    assert len(random_bytes(randomness._BATCH + 1)) == randomness._BATCH + 1


def test_a_forked_child_does_not_reuse_the_parents_batch() -> None:
    random_bytes(1)  # a batch is held now
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next bytes
        os.write(writer, random_bytes(16))
        os._exit(0)
    os.close(writer)
    childs = os.read(reader, 16)
    os.close(reader)
    os.waitpid(pid, 0)
    assert childs != random_bytes(16)
