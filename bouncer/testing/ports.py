"""Finding free TCP ports and waiting for a listener to come up."""
from __future__ import annotations

import socket
import time
from typing import Any, Callable, Optional


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that nobody listens on right now (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ipv6_loopback_works() -> bool:
    """True when ``::1`` can be bound (containers often have IPv6 disabled)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def accepts_connections(family: int, address: Any) -> bool:
    """True when a stream socket of ``family`` can connect to ``address`` right now."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def wait_until(ready: Callable[[], bool], timeout: float,
               give_up: Optional[Callable[[], bool]] = None, interval: float = 0.05) -> bool:
    """Poll ``ready`` until it is true (returns True) or ``timeout`` passes (returns False).

    ``give_up`` lets the caller stop early, e.g. when the process it waits for has died.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if give_up is not None and give_up():
            return False
        time.sleep(interval)
    return ready()
