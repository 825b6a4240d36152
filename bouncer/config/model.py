"""Frozen dataclasses holding a loaded configuration: what the runtime reads.

``None`` in an optional field means "not set here: inherit" (from the user, the database
or the ``[pgbouncer]`` section, in PgBouncer's order).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

from bouncer.config.attributes import SettingAttributes

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config.settings import Setting

#: A plugin's settings live in ``[plugin.NAME]``; their SHOW CONFIG keys are ``plugin.NAME.key``.
PLUGIN_SECTION_PREFIX = "plugin."


@dataclass(frozen=True)
class DatabaseDef:
    """One ``[databases]`` entry; the name ``*`` is the fallback for unlisted databases.

    ``host`` empty means a Unix socket in ``unix_socket_dir``; several hosts are used
    according to ``load_balance_hosts``.  ``startup_params`` are sent at server login,
    named as PostgreSQL reports them (``DateStyle``, ``TimeZone``, ...).
    """

    name: str
    host: Tuple[str, ...] = ()
    port: int = 5432
    dbname: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None
    auth_user: Optional[str] = None
    auth_query: Optional[str] = None
    auth_dbname: Optional[str] = None
    pool_size: Optional[int] = None
    min_pool_size: Optional[int] = None
    reserve_pool_size: Optional[int] = None
    connect_query: Optional[str] = None
    pool_mode: Optional[str] = None
    max_db_connections: Optional[int] = None
    max_db_client_connections: Optional[int] = None
    server_lifetime: Optional[float] = None
    query_wait_timeout: Optional[float] = None
    load_balance_hosts: str = "round-robin"
    # Excluded from the hash so the frozen dataclass stays hashable despite the dict.
    startup_params: Dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class UserDef:
    """One ``[users]`` entry (or an admin ``SET USER``): per-user overrides."""

    name: str
    pool_size: Optional[int] = None
    reserve_pool_size: Optional[int] = None
    pool_mode: Optional[str] = None
    max_user_connections: Optional[int] = None
    max_user_client_connections: Optional[int] = None
    query_timeout: Optional[float] = None
    query_wait_timeout: Optional[float] = None
    idle_transaction_timeout: Optional[float] = None
    transaction_timeout: Optional[float] = None
    client_idle_timeout: Optional[float] = None


@dataclass(frozen=True)
class PoolDef:
    """One ``[pools]`` entry ``user.database = pool_size=N`` (cf-pgbouncer's extension).

    ``pool_size`` None means "no override" (written ``pool_size=-1``).
    """

    user: str
    database: str
    pool_size: Optional[int]


@dataclass(frozen=True)
class PeerDef:
    """One ``[peers]`` entry: another bouncer process that cancel requests may belong to.

    ``host`` None means a Unix socket in ``unix_socket_dir``; ``pool_size`` None means
    ``default_pool_size``.
    """

    peer_id: int
    host: Optional[str] = None
    port: int = 6432
    pool_size: Optional[int] = None


@dataclass(frozen=True)
class Config(SettingAttributes):
    """A whole loaded configuration.

    ``settings`` has a typed value for every :data:`~bouncer.config.settings.SETTINGS`
    entry, defaults filled in; ``explicit`` names those the file actually set.  Any
    setting is also an attribute: ``config.listen_port``.

    ``plugin_declarations`` are the settings plugins declared (section name -> settings, see
    ``bouncer_declare_settings``) when the file was read, and ``plugin_settings`` their typed
    values, defaults filled in, for every declared section; ``explicit`` also names each
    ``plugin.NAME`` section the file has and each ``plugin.NAME.key`` it sets.
    """

    path: str
    settings: Mapping[str, Any]
    databases: Mapping[str, DatabaseDef] = field(default_factory=dict)
    users: Mapping[str, UserDef] = field(default_factory=dict)
    pools: Mapping[Tuple[str, str], PoolDef] = field(default_factory=dict)
    peers: Mapping[int, PeerDef] = field(default_factory=dict)
    warnings: Tuple[str, ...] = ()
    explicit: frozenset[str] = frozenset()
    plugin_declarations: Mapping[str, Tuple["Setting", ...]] = field(default_factory=dict)
    plugin_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Settings become plain attributes (typed by SettingAttributes): a login reads a few
        # dozen of them.  A name that is already a field or a method keeps its meaning.
        for name, value in self.settings.items():
            if name not in self.__dict__ and not hasattr(type(self), name):
                self.__dict__[name] = value

    def plugin(self, name: str) -> Mapping[str, Any]:
        """The typed values of section ``[plugin.NAME]`` (defaults where the file is silent).

        :raises KeyError: no loaded plugin declared that section.
        """
        return self.plugin_settings[name]

    def worker_peer_ids(self) -> range:
        """The peer ids of the workers (``workers`` above 1), one each for its cancel keys:
        ``peer_id`` (1 when peering is off: the workers are peers of one another) onwards."""
        first = self.peer_id or 1
        return range(first, first + self.workers)

    def has_plugin_section(self, name: str) -> bool:
        """Whether the file has a ``[plugin.NAME]`` section (a plugin may mean "enabled")."""
        return PLUGIN_SECTION_PREFIX + name in self.explicit

