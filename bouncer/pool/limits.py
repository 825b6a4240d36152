"""Effective limits and settings: the fallback chain from runtime overrides to the ini.

One place answers "what is this pool's size / mode / timeout" and "what is this user's or
database's connection cap", as PgBouncer's ``pool_pool_size()`` and ``user_max_connections()``
do, so runtime overrides (SET USER, SET POOL) and reloads only have to change the inputs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar, overload

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config, DatabaseDef

T = TypeVar("T")


# Ending with a value that is never None (a [pgbouncer] default, say), the result is set.
@overload
def first_set(first: Optional[T], last: T, /) -> T: ...
@overload
def first_set(first: Optional[T], second: Optional[T], last: T, /) -> T: ...
@overload
def first_set(*values: Optional[T]) -> Optional[T]: ...


def first_set(*values: Optional[Any]) -> Optional[Any]:
    """The first value that is not ``None`` (an unset override inherits)."""
    for value in values:
        if value is not None:
            return value
    return None


def smaller_limit(limit: int, other: Optional[int]) -> int:
    """The tighter of two limits where 0 means unlimited and ``None`` means not set."""
    if other is None or not limit:
        return limit if other is None else other
    return min(limit, other) if other else limit


class Overrides:
    """Runtime values set from the admin console (SET USER, SET POOL).

    They win over the ini until RELOAD clears them.  A key absent here inherits.
    """

    def __init__(self) -> None:
        self.users: Dict[str, Dict[str, Any]] = {}
        self.pools: Dict[Tuple[str, str], Dict[str, Any]] = {}

    def user_value(self, user: str, key: str) -> Optional[Any]:
        return self.users.get(user, {}).get(key)

    def pool_value(self, user: str, database: str, key: str) -> Optional[Any]:
        return self.pools.get((user, database), {}).get(key)

    def update_user(self, user: str, changes: Mapping[str, Optional[Any]]) -> None:
        """Set the keys named in *changes*; a ``None`` value removes the override."""
        _update(self.users, user, changes)

    def update_pool(self, user: str, database: str, changes: Mapping[str, Optional[Any]]) -> None:
        """As :meth:`update_user`, for the ``[pools]`` entry ``user.database``."""
        _update(self.pools, (user, database), changes)

    def clear(self) -> None:
        self.users.clear()
        self.pools.clear()


def _update(table: Dict[Any, Dict[str, Any]], name: Any,
            changes: Mapping[str, Optional[Any]]) -> None:
    values = table.setdefault(name, {})
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    if not values:
        del table[name]


def user_value(config: "Config", overrides: Overrides, user: str, key: str) -> Optional[Any]:
    """A ``[users]`` key of *user*: the runtime override, else the ini's, else ``None``."""
    value = overrides.user_value(user, key)  # (a login reads a dozen: no first_set call here)
    return value if value is not None else getattr(config.users.get(user), key, None)


def user_cap(config: "Config", overrides: Overrides, user: str, key: str) -> int:
    """``max_user_connections`` or ``max_user_client_connections`` in force for *user*.

    As PgBouncer's ``user_max_connections()``: the user's own value when positive, else the
    ``[pgbouncer]`` setting of the same name (0 = unlimited).
    """
    return _positive_or(user_value(config, overrides, user, key), config.settings[key])


def database_cap(config: "Config", definition: Any, key: str) -> int:
    """``max_db_connections`` or ``max_db_client_connections`` in force for a database.

    The database's own value when positive, else the global setting (PgBouncer's rule).
    """
    return _positive_or(getattr(definition, key, None), config.settings[key])


def _positive_or(value: Optional[int], default: int) -> int:
    return value if value is not None and value > 0 else default


def database_min_pool_size(config: "Config", definition: "DatabaseDef") -> int:
    """The servers each pool of a database keeps: its own min_pool_size, or the global one."""
    return first_set(definition.min_pool_size, config.min_pool_size)


class PoolLimits:
    """Reads the current config (through *get_config*, so a reload is seen at once)."""

    def __init__(self, get_config: Callable[[], "Config"], database: Any, user: str,
                 overrides: Any) -> None:
        self._config = get_config
        self._database = database
        self.database = database.name
        self.user = user
        #: Runtime overrides from the admin console (``SET USER`` / ``SET POOL``).
        self.overrides = overrides

    def config(self) -> "Config":
        """The configuration in force now."""
        return self._config()

    def _db(self) -> Any:
        return self._database.definition

    def _field(self, obj: Any, name: str) -> Optional[Any]:
        return getattr(obj, name, None) if obj is not None else None

    def _user_value(self, name: str) -> Optional[Any]:
        return user_value(self._config(), self.overrides, self.user, name)

    def pool_size(self) -> int:
        """Servers this pool may hold (0 = unlimited).

        A ``[pools]`` size (or SET POOL) applies, capped by the database's own ``pool_size``
        when both are set; otherwise the user's, then the database's, then
        ``default_pool_size``.
        """
        db_size = self._field(self._db(), "pool_size")
        pool_size = first_set(self.overrides.pool_value(self.user, self.database, "pool_size"),
                              self._config_pool_size())
        if pool_size is not None:
            return smaller_limit(pool_size, db_size)
        return first_set(self._user_value("pool_size"), db_size,
                         self._config().default_pool_size)

    def max_db_connections(self) -> int:
        """The database's cap on server connections across its pools (0 = unlimited)."""
        return database_cap(self._config(), self._db(), "max_db_connections")

    def max_user_connections(self) -> int:
        """The user's cap on server connections across its pools (0 = unlimited)."""
        return user_cap(self._config(), self.overrides, self.user, "max_user_connections")

    def _config_pool_size(self) -> Optional[int]:
        pool = self._config().pools.get((self.user, self.database))
        return pool.pool_size if pool is not None else None

    def reserve_size(self) -> int:
        return first_set(self._user_value("reserve_pool_size"),
                         self._field(self._db(), "reserve_pool_size"),
                         self._config().reserve_pool_size)

    def reserve_timeout(self) -> float:
        return self._config().reserve_pool_timeout

    def min_pool_size(self) -> int:
        return database_min_pool_size(self._config(), self._db())

    def pool_mode(self) -> str:
        return first_set(self._user_value("pool_mode"), self._field(self._db(), "pool_mode"),
                         self._config().pool_mode)

    def query_wait_timeout(self) -> float:
        return first_set(self._user_value("query_wait_timeout"),
                         self._field(self._db(), "query_wait_timeout"),
                         self._config().query_wait_timeout)

    def query_timeout(self) -> float:
        return self._user_or_config("query_timeout")

    def idle_transaction_timeout(self) -> float:
        return self._user_or_config("idle_transaction_timeout")

    def transaction_timeout(self) -> float:
        return self._user_or_config("transaction_timeout")

    def client_idle_timeout(self) -> float:
        return self._user_or_config("client_idle_timeout")

    def _user_or_config(self, name: str) -> Any:
        """The user's *name* (SET USER, then ``[users]``), else the ``[pgbouncer]`` one: read
        with one look at the configuration, as every client's relay reads four of them."""
        config = self._config()
        value = user_value(config, self.overrides, self.user, name)
        return value if value is not None else getattr(config, name)

    def server_lifetime(self) -> float:
        return first_set(self._field(self._db(), "server_lifetime"),
                         self._config().server_lifetime)

    def wait_notify(self) -> float:
        """query_wait_notify: seconds of queueing after which a client is told (0: never)."""
        return self._config().query_wait_notify

    def server_check(self) -> Tuple[Optional[str], float]:
        """(query to check a reused server with, or None for no check; server_check_delay).
        ``<empty>`` sends an empty query, PgBouncer's cheapest check."""
        config = self._config()
        query = config.server_check_query
        if not query:
            return None, config.server_check_delay
        return ("" if query == "<empty>" else query), config.server_check_delay

    def login_retry(self) -> float:
        return self._config().server_login_retry

    def round_robin(self) -> bool:
        return bool(self._config().server_round_robin)
