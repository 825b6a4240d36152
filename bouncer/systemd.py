"""sd_notify without a dependency: one datagram to ``$NOTIFY_SOCKET`` per state change."""
from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``READY=1``-style fields to systemd; False (and no error) when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError:
        return False
    return True
