"""Server address resolution, cached for ``dns_max_ttl`` seconds.

gevent's resolver sends even an IP literal through its thread pool, which costs about three
times the connect itself; literals and unix socket paths therefore never reach the resolver,
and names are resolved once per TTL.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any, Dict, List, Optional, Tuple, Union

#: (family, sockaddr): a unix socket's path, or an (address, port, ...) tuple.
Address = Tuple[int, Union[str, Tuple[Any, ...]]]


class Resolver:
    """getaddrinfo with a TTL cache; failures are cached for ``dns_nxdomain_ttl``."""

    def __init__(self, max_ttl: float = 15.0, nxdomain_ttl: float = 15.0) -> None:
        self.max_ttl = max_ttl
        self.nxdomain_ttl = nxdomain_ttl
        #: (host, port) -> (expiry, the addresses or the failure)
        self._cache: Dict[Tuple[str, int], Tuple[float, Union[List[Address], OSError]]] = {}

    def resolve(self, host: str, port: int) -> List[Address]:
        """Addresses to try, in order.  A host starting with ``/`` is a unix socket dir.

        :raises OSError: the name does not resolve (possibly a cached failure).
        """
        if host.startswith("/"):
            return [(socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")]
        literal = _ip_literal(host, port)
        if literal is not None:
            return [literal]
        return self._cached(host, port)

    def _cached(self, host: str, port: int) -> List[Address]:
        key = (host, port)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            if isinstance(hit[1], OSError):
                raise hit[1]
            return hit[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            self._cache[key] = (time.monotonic() + self.nxdomain_ttl, exc)
            raise
        addresses: List[Address] = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        self._cache[key] = (time.monotonic() + self.max_ttl, addresses)
        return addresses

    def entries(self) -> List[Tuple[str, float, List[Address]]]:
        """(host, seconds to live, addresses) for SHOW DNS_HOSTS."""
        now = time.monotonic()
        return [(host, max(0.0, expiry - now), value) for (host, _), (expiry, value)
                in self._cache.items() if not isinstance(value, OSError)]


def _ip_literal(host: str, port: int) -> Optional[Address]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return (socket.AF_INET6, (host, port, 0, 0))
    return (socket.AF_INET, (host, port))
