"""Replication connections through the pooler (``replication=database`` or ``replication=true``),
as PgBouncer 1.23+ serves them.

A replication client gets a server connection of its own, opened for it with its own startup
parameters (``replication``, its tracked parameters and its ``options`` as they are: physical
replication takes no SET, and CREATE SUBSCRIPTION puts settings such as extra_float_digits
there), linked for the whole session whatever the pool_mode, and closed when it leaves.  It
counts towards pool_size: an idle server of the pool is evicted to make room for it.

A server refusing such a login (no REPLICATION attribute, no ``replication`` line in its
pg_hba.conf) fails that client only: the pool's other clients are not told, since normal
logins still work.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, List, cast

from bouncer.config.kinds import parse_bool
from bouncer.errors import ClientError
from bouncer.proto import sqlstate
from bouncer.session.server import ServerConnection, connect_server
from bouncer.session.server_login import ServerLoginError

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.pool.pool import Pool
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

#: The ``replication`` startup values, as PgBouncer's log line spells them.
NONE, LOGICAL, PHYSICAL = "no", "database", "yes"


def replication_kind(value: str) -> str:
    """NONE, LOGICAL or PHYSICAL for a client's ``replication`` startup parameter.

    :raises ClientError: neither ``database`` nor a boolean.
    """
    if value == LOGICAL:
        return LOGICAL
    try:
        return PHYSICAL if parse_bool(value) else NONE
    except ValueError:
        raise ClientError(f'invalid value for parameter "replication": "{value[:64]}"',
                          sqlstate.PROTOCOL_VIOLATION) from None


def open_server(client: "ClientSession") -> ServerConnection:
    """Open the client's own server connection and link it (during the client's login).

    :raises ClientError: no room in the pool in time, the server unreachable, or the server
        refused the login (``login failed``, its reason in the log).
    """
    pool = cast("Pool", client.pool)  # (admitted)
    placeholder = pool.reserve_dedicated()
    opened: List[ServerConnection] = []
    try:
        server = connect_server(client.app, pool, on_connected=opened.append,
                                startup_params=_startup_params(client))
    except ServerLoginError as err:
        pool.unreserve(placeholder)
        for refused in opened:
            log.info("%s closing because: login failed (age=0s)", refused.prefix)
        raise ClientError("login failed", sqlstate.PROTOCOL_VIOLATION,
                          detail=err.message) from err
    except ClientError:
        pool.unreserve(placeholder)
        raise
    pool.adopt_dedicated(placeholder, server, client)
    client.server = server
    return server


def _startup_params(client: "ClientSession") -> Dict[str, str]:
    params = {"replication": client.replication, **client.params}
    if client.startup_options is not None:
        params["options"] = client.startup_options
    return params
