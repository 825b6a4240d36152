"""Effective per-pool settings: the fallback chain from a pool to its user, database and globals.

One place answers "what is this pool's size / mode / timeout", as PgBouncer's
``pool_pool_size()`` & co. do, so runtime overrides (SET USER, SET POOL) and reloads only have
to change the inputs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config


def first_set(*values: Optional[Any]) -> Optional[Any]:
    """The first value that is not ``None`` (an unset override inherits)."""
    for value in values:
        if value is not None:
            return value
    return None


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

    def _user(self) -> Any:
        return self._config().users.get(self.user)

    def _field(self, obj: Any, name: str) -> Optional[Any]:
        return getattr(obj, name, None) if obj is not None else None

    def _user_value(self, name: str) -> Optional[Any]:
        return first_set(self.overrides.user_value(self.user, name),
                         self._field(self._user(), name))

    def pool_size(self) -> int:
        """Servers this pool may hold (0 = unlimited); [pools] beats user beats database."""
        db_size = self._field(self._db(), "pool_size")
        pool_size = first_set(self.overrides.pool_value(self.user, self.database, "pool_size"),
                              self._config_pool_size())
        if pool_size is not None:
            return min(pool_size, db_size) if db_size is not None else pool_size
        return first_set(self._user_value("pool_size"), db_size,
                         self._config().default_pool_size)

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
        return first_set(self._field(self._db(), "min_pool_size"), self._config().min_pool_size)

    def pool_mode(self) -> str:
        return first_set(self._user_value("pool_mode"), self._field(self._db(), "pool_mode"),
                         self._config().pool_mode)

    def query_wait_timeout(self) -> float:
        return first_set(self._user_value("query_wait_timeout"),
                         self._field(self._db(), "query_wait_timeout"),
                         self._config().query_wait_timeout)

    def query_timeout(self) -> float:
        return first_set(self._user_value("query_timeout"), self._config().query_timeout)

    def idle_transaction_timeout(self) -> float:
        return first_set(self._user_value("idle_transaction_timeout"),
                         self._config().idle_transaction_timeout)

    def client_idle_timeout(self) -> float:
        return first_set(self._user_value("client_idle_timeout"),
                         self._config().client_idle_timeout)

    def server_lifetime(self) -> float:
        return first_set(self._field(self._db(), "server_lifetime"),
                         self._config().server_lifetime)

    def login_retry(self) -> float:
        return self._config().server_login_retry

    def round_robin(self) -> bool:
        return bool(self._config().server_round_robin)
