"""Databases, users and pools: lookup, creation (auto-databases from ``*``) and reload.

The registry is the object model behind SHOW DATABASES / USERS / POOLS.  It knows nothing
about sockets: pools open server connections through the connector the App gives it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional

from gevent.event import Event

from bouncer.pool.limits import Overrides, PoolLimits
from bouncer.pool.pool import Pool
from bouncer.pool.stats import Counters

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config, DatabaseDef
    from bouncer.slots.client import SlotClient

log = logging.getLogger(__name__)

AUTODB = "*"


class DatabaseState:
    """A configured (or auto-created) database and its pools."""

    def __init__(self, registry: "Registry", definition: "DatabaseDef", autodb: bool) -> None:
        self.registry = registry
        self.definition = definition
        self.name = definition.name
        self.autodb = autodb
        self.stats = Counters()
        #: Set while the database is not paused: acquiring a server waits on it (PAUSE).
        self.resumed = Event()
        self.resumed.set()
        #: While paused, what a client asking for a server gets instead of waiting (shutdown).
        self.refusal: Optional[BaseException] = None
        #: DISABLE on the admin console (ENABLE undoes it; a RELOAD does not).
        self.disabled = False
        #: Left the configuration at a RELOAD, but still has pools: its clients stay, new ones
        #: are refused until a RELOAD brings it back.
        self.removed = False
        self.pools: Dict[str, Pool] = {}
        #: Where the next connection starts in a comma list of hosts (PgBouncer's rrcounter).
        self._host_index = 0
        #: Since when an auto-database has had no clients (the janitor frees it later).
        self.idle_since: Optional[float] = None

    def hosts_in_order(self) -> List[str]:
        """The hosts a new connection tries, first to last (empty: the default unix socket).

        As PgBouncer, a comma list starts at the next entry for each connection
        (round-robin), or at the current one, which only a failure moves on (disable).
        """
        hosts = self.definition.host
        if len(hosts) < 2:
            return list(hosts)
        start = self._host_index % len(hosts)
        if self.definition.load_balance_hosts != "disable":
            self._host_index += 1
        return list(hosts[start:] + hosts[:start])

    def host_failed(self, host: str) -> None:
        """A connection to *host* failed: with load_balance_hosts=disable, new connections
        move on to the next host (unless another failure moved them already)."""
        hosts = self.definition.host
        if (self.definition.load_balance_hosts == "disable" and len(hosts) > 1
                and hosts[self._host_index % len(hosts)] == host):
            self._host_index += 1

    @property
    def refuses_logins(self) -> bool:
        return self.disabled or self.removed

    @property
    def paused(self) -> bool:
        return not self.resumed.is_set()

    def server_count(self) -> int:
        return sum(pool.server_count() for pool in self.pools.values())

    def client_count(self) -> int:
        return sum(len(pool.clients) for pool in self.pools.values())

    def active_count(self) -> int:
        return sum(len(pool.active) for pool in self.pools.values())


class UserState:
    """A user seen by the pooler (configured in [users] or logged in)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pools: Dict[str, Pool] = {}

    def server_count(self) -> int:
        return sum(pool.server_count() for pool in self.pools.values())


class Registry:
    """Every database, user and pool the pooler knows."""

    def __init__(self, get_config: Callable[[], "Config"],
                 connector: Callable[[Pool], Any],
                 cross_pool_limit: Callable[[Pool], Optional[str]],
                 on_wait: Callable[[Pool, float], None] = lambda pool, seconds: None,
                 slots: Optional["SlotClient"] = None) -> None:
        self._config = get_config
        self._connector = connector
        self._cross_pool_limit = cross_pool_limit
        #: The slot channel to the supervisor (workers), handed to every pool; else None.
        self._slots = slots
        #: Told how long a client queued for a server of a pool, once it got one.
        self.client_waited = on_wait
        self.overrides = Overrides()
        self.databases: Dict[str, DatabaseState] = {}
        self.users: Dict[str, UserState] = {}
        self.apply_config(get_config())

    # -- lookup --------------------------------------------------------------------------------

    def find_database(self, name: str) -> Optional[DatabaseState]:
        """The configured database, or one auto-created from the ``*`` entry, or ``None``."""
        state = self.databases.get(name)
        if state is not None:
            return state
        fallback = self._config().databases.get(AUTODB)
        if fallback is None:
            return None
        definition = dataclasses.replace(fallback, name=name)
        state = self.databases[name] = DatabaseState(self, definition, autodb=True)
        log.info("registered new auto-database: db=%s", name)
        return state

    def user(self, name: str) -> UserState:
        state = self.users.get(name)
        if state is None:
            state = self.users[name] = UserState(name)
        return state

    def pool(self, database: DatabaseState, user_name: str) -> Pool:
        """The pool for (database, user), created on first use."""
        pool = database.pools.get(user_name)
        if pool is None:
            user = self.user(user_name)
            limits = PoolLimits(self._config, database, user_name, self.overrides)
            pool = Pool(database, user, connector=self._connector, limits=limits,
                        cross_pool_limit=self._cross_pool_limit, slots=self._slots)
            database.pools[user_name] = pool
            user.pools[database.name] = pool
        return pool

    def pools(self) -> Iterator[Pool]:
        for database in list(self.databases.values()):
            yield from list(database.pools.values())

    def forget_pool(self, pool: Pool, reason: str) -> None:
        """Drop an unused pool (pool_idle_timeout); the next client makes a new one."""
        database, user = pool.database, pool.user
        if database.pools.get(user.name) is pool:
            del database.pools[user.name]
        if user.pools.get(database.name) is pool:
            del user.pools[database.name]
        log.info("cleaning up idle pool for user %s on db %s because: %s", user.name,
                 database.name, reason)

    def forget_database(self, database: DatabaseState, reason: str) -> None:
        """Close a database's servers and drop it with its pools (a free auto-database)."""
        for user_name, pool in list(database.pools.items()):
            for server in pool.all_servers():
                pool.close_server(server, reason)
            self.users[user_name].pools.pop(database.name, None)
        self.databases.pop(database.name, None)
        log.info("auto-database %s freed: %s", database.name, reason)

    # -- events --------------------------------------------------------------------------------

    def server_closed(self, pool: Pool) -> None:
        """A server closed: pools blocked by a cross-pool limit may open one now."""
        pool.launch_if_needed()
        for other in self.pools():
            if other is not pool and other.waiters and other.blocked_by:
                other.launch_if_needed()

    def apply_config(self, config: "Config") -> None:
        """Bring databases and users in line with a (re)loaded configuration.

        Changed definitions apply to new server connections; a database that left the config
        keeps serving its current clients until they go (PgBouncer does the same), but new
        logins no longer find it.
        """
        for name, definition in config.databases.items():
            if name == AUTODB:
                continue
            state = self.databases.get(name)
            if state is None:
                self.databases[name] = DatabaseState(self, definition, autodb=False)
            else:
                if connection_changed(state.definition, definition):
                    for pool in state.pools.values():
                        pool.mark_close_needed("database configuration changed")
                state.definition = definition
                state.autodb = False
                state.removed = False
        fallback = config.databases.get(AUTODB)
        for name, state in list(self.databases.items()):
            if name in config.databases:
                continue
            if state.autodb and fallback is not None:
                state.definition = dataclasses.replace(fallback, name=name)
            elif not state.pools:
                del self.databases[name]
            else:
                state.removed = True
        for name in config.users:
            self.user(name)
        for pool in self.pools():
            pool.refresh_limits()


#: The DatabaseDef fields that decide what a server connection is connected to.
_CONNECTION_FIELDS = ("host", "port", "dbname", "user", "password", "startup_params")


def connection_changed(old: "DatabaseDef", new: "DatabaseDef") -> bool:
    """True when servers opened under *old* would differ from new ones (PgBouncer then
    reconnects them; a changed pool_size alone does not)."""
    return any(getattr(old, field) != getattr(new, field) for field in _CONNECTION_FIELDS)
