"""Memory per idle client: how much each pooler's RSS grows with N logged-in idle clients.

Usage (from the repository root): ``python bench/idle_clients.py [--clients 5000] [--raw]``.
``--raw`` only opens TCP connections, without a startup packet or login.  Progress goes to
stderr, a Markdown table to stdout.  See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

# harness comes first: it makes the repository root (bouncer, tests.support) importable.
from harness import (POOLER_NAMES, Target, environment_line, markdown_table, pooler_ini,
                     progress, start_postgres, start_targets)
from procstat import open_descriptors, rss_kib
from tests.support import pgwire
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, PgCluster

DEFAULT_CLIENTS = 5000
MAX_CLIENT_CONN = 20000
# Clients open in batches, each once the pooler holds the one before: a connect returns as
# soon as the kernel queues the connection, so without batches all of them would wait in the
# listen backlog (128 by default) at once; opened so, some connections to PgBouncer were
# still half-open more than 30 s after the client had closed them.
CONNECT_BATCH = 100
SETTLE_SECONDS = 1.0  # lets the pooler finish the work the last client caused
ACCEPT_TIMEOUT = 30.0
USER, DATABASE = "md5user", "bench"


class LoginError(RuntimeError):
    pass


@dataclass(frozen=True)
class Measurement:
    target: str
    clients: int
    rss_before: int  # KiB, after one warm-up login, so pools and cached parameters exist
    rss_with_clients: int
    rss_after_close: int
    seconds_to_open: float

    @property
    def kib_per_client(self) -> float:
        return (self.rss_with_clients - self.rss_before) / self.clients


def raise_descriptor_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the poolers started later inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def read_message(reader: asyncio.StreamReader) -> Tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], await reader.readexactly(length - 4)


async def log_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """StartupMessage and an md5 (or cleartext) answer, up to the first ReadyForQuery."""
    writer.write(pgwire.startup({"user": USER, "database": DATABASE}))
    plain = STANDARD_PASSWORDS[USER]
    while True:
        kind, body = await read_message(reader)
        if kind == b"Z":
            return
        if kind == b"E":
            raise LoginError(pgwire.error_fields(body).get("M", "login failed"))
        code = pgwire.auth_code(body) if kind == b"R" else None
        if code == pgwire.AUTH_MD5:
            writer.write(pgwire.password(pgwire.md5_answer(USER, plain, body[4:8])))
        elif code == pgwire.AUTH_CLEARTEXT:
            writer.write(pgwire.password(plain))
        elif code not in (None, pgwire.AUTH_OK):
            raise LoginError(f"cannot answer authentication request {code}")


async def open_client(target: Target, login: bool) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    if login:
        await log_in(reader, writer)
    return writer  # holds the transport, which holds the reader


async def open_clients(target: Target, count: int, login: bool,
                       descriptors_before: int) -> List[asyncio.StreamWriter]:
    assert target.pid is not None
    clients: List[asyncio.StreamWriter] = []
    while len(clients) < count:
        batch = min(CONNECT_BATCH, count - len(clients))
        clients += await asyncio.gather(*(open_client(target, login) for _ in range(batch)))
        expected = descriptors_before + len(clients)
        held = await wait_for_descriptors(target.pid, lambda n, goal=expected: n >= goal)
        if held < expected:
            raise RuntimeError(f"{target.name} holds only {held - descriptors_before} of "
                               f"{len(clients)} clients after {ACCEPT_TIMEOUT:.0f} s")
    return clients


async def close_clients(clients: Sequence[asyncio.StreamWriter]) -> None:
    for writer in clients:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in clients),
                         return_exceptions=True)


async def wait_for_descriptors(pid: int, done: Callable[[int], bool]) -> int:
    """Poll the pooler's descriptor count until ``done(count)`` or ACCEPT_TIMEOUT."""
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    count = open_descriptors(pid)
    while not done(count) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        count = open_descriptors(pid)
    return count


async def measure(target: Target, count: int, login: bool) -> Measurement:
    assert target.pid is not None
    await close_clients([await open_client(target, login=True)])  # warm-up
    await asyncio.sleep(SETTLE_SECONDS)
    rss_before, descriptors_before = rss_kib(target.pid), open_descriptors(target.pid)
    started = time.monotonic()
    clients = await open_clients(target, count, login, descriptors_before)
    seconds_to_open = time.monotonic() - started
    await asyncio.sleep(SETTLE_SECONDS)
    rss_with_clients = rss_kib(target.pid)
    await close_clients(clients)
    left = await wait_for_descriptors(target.pid, lambda n: n <= descriptors_before)
    if left > descriptors_before:
        progress(f"  {target.name} still holds {left - descriptors_before} more descriptors "
                 f"than before, {ACCEPT_TIMEOUT:.0f} s after the clients closed")
    await asyncio.sleep(SETTLE_SECONDS)
    return Measurement(target.name, count, rss_before, rss_with_clients, rss_kib(target.pid),
                       seconds_to_open)


def measurement_table(measurements: Sequence[Measurement], mode: str) -> str:
    header = ["pooler", "clients", "RSS before (KiB)", "RSS with clients (KiB)",
              "KiB per client", "RSS after they left (KiB)", "seconds to open"]
    return markdown_table(header, [
        [f"{m.target} ({mode})", f"{m.clients:,}", f"{m.rss_before:,}",
         f"{m.rss_with_clients:,}", f"{m.kib_per_client:.1f}", f"{m.rss_after_close:,}",
         f"{m.seconds_to_open:.1f}"] for m in measurements])


def idle_clients_ini(pg: PgCluster) -> str:
    # TCP_DEFER_ACCEPT (both poolers' default) keeps a silent connection in the kernel until
    # the SYN-ACK is resent, about a second: --raw clients would trickle in by the backlog.
    return pooler_ini(pg, max_client_conn=MAX_CLIENT_CONN, tcp_defer_accept=0)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS,
                        help=f"idle clients per pooler (default {DEFAULT_CLIENTS})")
    parser.add_argument("--raw", action="store_true",
                        help="only open TCP connections: no startup packet, no login")
    parser.add_argument("--targets", default=",".join(POOLER_NAMES),
                        help="comma-separated subset of: " + ", ".join(POOLER_NAMES))
    options = parser.parse_args(argv)
    options.targets = [name.strip() for name in options.targets.split(",") if name.strip()]
    unknown = set(options.targets) - set(POOLER_NAMES)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if not 0 < options.clients < MAX_CLIENT_CONN:
        parser.error(f"--clients must be between 1 and {MAX_CLIENT_CONN - 1}")
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    limit = raise_descriptor_limit()
    if limit < options.clients + 100:
        progress(f"RLIMIT_NOFILE hard limit {limit} is too low for {options.clients} clients")
        return 1
    mode = "TCP only" if options.raw else "logged in"
    with contextlib.ExitStack() as cleanup:
        pg = start_postgres("bouncer-idle-", cleanup)
        targets = start_targets(pg, options.targets, idle_clients_ini(pg), cleanup)
        measurements = []
        for target in targets:  # one at a time: the client side then needs one set of ports
            progress(f"{target.name}: opening {options.clients} idle clients ({mode}) ...")
            measurements.append(asyncio.run(measure(target, options.clients, not options.raw)))
        print("\n".join([
            "## Memory per idle client", "",
            f"{options.clients:,} idle clients ({mode}) per pooler over TCP to 127.0.0.1, "
            f"user {USER} (md5); KiB per client = RSS growth / clients. "
            f"Poolers: transaction pooling, max_client_conn {MAX_CLIENT_CONN}, "
            "tcp_defer_accept 0.",
            environment_line(pg), "",
            measurement_table(measurements, mode), ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
