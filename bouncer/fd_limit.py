"""The open-file limit: raised at start as far as the hard limit allows, and reported in
PgBouncer's words, with its estimate of how many descriptors the configuration may use.

Every client and every server connection is a descriptor; a soft limit of 1024 (a login
shell's default) caps bouncer at about a thousand clients whatever max_client_conn says.
"""
from __future__ import annotations

import logging
import resource
from typing import TYPE_CHECKING, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config

log = logging.getLogger(__name__)

#: PgBouncer's margin for the descriptors that are neither clients nor servers.
SPARE = 10


def expected_fd_use(config: "Config", user_count: int) -> int:
    """PgBouncer's estimate: every client, and a pool's worth of servers per database (per
    known user when the database has no forced user)."""
    total = config.max_client_conn + SPARE
    for database in config.databases.values():
        size = config.default_pool_size if database.pool_size is None else database.pool_size
        total += size if database.user else size * user_count
    return total


def raise_to_hard_limit() -> Tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (an infinite hard limit is left alone:
    the kernel's nr_open caps it anyway).  Returns ``(soft, hard)`` as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d to %d: %s",
                        soft, hard, exc)
            return soft, hard
        log.info("raised the file descriptor limit from %d to %d (the hard limit)", soft, hard)
        soft = hard
    return soft, hard


def apply(config: "Config", user_count: int) -> None:
    """Raise the limit, log it as PgBouncer does, and warn when the estimate exceeds it."""
    soft, hard = raise_to_hard_limit()
    expected = expected_fd_use(config, user_count)
    log.info("kernel file descriptor limit: %d (hard: %d); max_client_conn: %d, "
             "max expected fd use: %d", soft, hard, config.max_client_conn, expected)
    if soft != resource.RLIM_INFINITY and expected > soft:
        log.warning("max expected fd use (%d) exceeds the file descriptor limit (%d): raise "
                    "the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower "
                    "max_client_conn / pool sizes", expected, soft)
