"""The pidfile: written once the process serves, removed on exit if it is still ours."""
from __future__ import annotations

import os


def write(path: str) -> None:
    if path:
        with open(path, "w") as handle:
            handle.write(f"{os.getpid()}\n")


def remove(path: str) -> None:
    """Remove the pidfile if it is still ours (an online restart's new process rewrote it)."""
    try:
        with open(path) as handle:
            if handle.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass  # no pidfile configured, or already gone
