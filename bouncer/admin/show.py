"""SHOW commands about databases, pools, users, statistics, configuration and process state.

Columns, their order and their types are PgBouncer 1.25's (admin.c / stats.c); columns of
bouncer's own are only ever appended at the end.  As in PgBouncer, the console's own database
``pgbouncer`` appears in the lists (one pool, user ``pgbouncer``, statement mode), and rows come
sorted by name.  SHOW CLIENTS / SERVERS / SOCKETS / FDS live in :mod:`bouncer.admin.sockets`.

The ``*_table(app)`` functions build the rows of a command; the console sends them and other
readers (the metrics plugin) take them as they are, with :func:`records`, so every view of the
pooler's state is computed in one place.  With ``workers`` above 1 the commands about pools,
databases, users, statistics, the state and the DNS cache answer for the whole pooler: each
says how its rows from every worker merge (:mod:`bouncer.admin.merge`).  SHOW CONFIG and SHOW
PEERS answer for the worker reached: SET and RELOAD act on every worker, so all have the same
settings (but peer_id, each its own; a restarted worker replays the SETs,
:mod:`bouncer.admin.journal`).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from bouncer import VERSION_STRING
from bouncer.admin import grammar, merge
from bouncer.admin.commands import (InvalidCommand, Result, columns, on_every_worker, show,
                                    stats_allowed)
from bouncer.config import all_settings, format_value
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.net.tls import TlsSettings
from bouncer.net.tls_check import describe_policy
from bouncer.pool.limits import database_cap, first_set, user_cap, user_value
from bouncer.pool.peer_pool import peer_pool_size
from bouncer.pool.stats import FIELDS

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.console import Console
    from bouncer.app import App
    from bouncer.pool.pool import Pool
    from bouncer.pool.registry import DatabaseState

#: The console's own pool, as PgBouncer sets it up (admin_setup()).
ADMIN_USER = "pgbouncer"
ADMIN_POOL_SIZE = 2
ADMIN_POOL_MODE = "statement"

#: Parameters drivers SET or SHOW on connect; the console answers them without effect.
FAKE_PARAMETERS = {
    "client_encoding": "UTF-8",
    "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on",
    "datestyle": "ISO",
    "timezone": "GMT",
    "extra_float_digits": "2",
}


def records(cols: Sequence[Tuple[str, int]], rows: Sequence[Sequence[Any]]
            ) -> List[Dict[str, Any]]:
    """Rows of a ``*_table`` as mappings of column name to value."""
    names = [name for name, _ in cols]
    return [dict(zip(names, row)) for row in rows]


def admin_clients(app: "App") -> List[Any]:
    """Logged-in console users: the clients of the ``pgbouncer`` pool."""
    return [client for client in app.clients if client.is_admin and client.logged_in]


# -- DATABASES -------------------------------------------------------------------------------

DATABASE_COLUMNS = columns(
    "ssissiiiissiiiiii", "name", "host", "port", "database", "force_user", "pool_size",
    "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
    "max_connections", "current_connections", "max_client_connections",
    "current_client_connections", "paused", "disabled")


#: Settings are the same in every worker; connection counts add up; paused anywhere is paused.
_DATABASE_MERGE = merge.keyed(1, [merge.first] * 11 + [merge.total, merge.first, merge.total]
                              + [merge.largest] * 2)


@stats_allowed
@on_every_worker(_DATABASE_MERGE)
def show_databases(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(DATABASE_COLUMNS, database_table(console.app))


def database_table(app: "App") -> List[List[Any]]:
    """SHOW DATABASES' rows (:data:`DATABASE_COLUMNS`)."""
    rows = [_database_row(app, db) for db in app.registry.databases.values()]
    rows.append(_admin_database_row(app))
    return sorted(rows, key=lambda row: row[0])


def _database_row(app: "App", db: "DatabaseState") -> List[Any]:
    config, definition = app.config, db.definition
    return [db.name, ",".join(definition.host) or None, definition.port,
            definition.dbname or db.name, definition.user,
            first_set(definition.pool_size, config.default_pool_size),
            first_set(definition.min_pool_size, config.min_pool_size),
            first_set(definition.reserve_pool_size, config.reserve_pool_size),
            int(definition.server_lifetime or config.server_lifetime),
            definition.pool_mode, _load_balance_hosts(db),
            database_cap(config, definition, "max_db_connections"), db.server_count(),
            database_cap(config, definition, "max_db_client_connections"),
            db.client_count(), int(db.paused), int(db.disabled)]


def _admin_database_row(app: "App") -> List[Any]:
    config = app.config
    return [ADMIN_DATABASE, None, config.listen_port, ADMIN_DATABASE, ADMIN_USER,
            ADMIN_POOL_SIZE, 0, 0, int(config.server_lifetime), ADMIN_POOL_MODE, None,
            config.max_db_connections, 0, config.max_db_client_connections,
            len(admin_clients(app)), 0, 0]


def _load_balance_hosts(db: "DatabaseState") -> Optional[str]:
    """PgBouncer shows the mode only where it matters: a database with several hosts."""
    return db.definition.load_balance_hosts if len(db.definition.host) > 1 else None


# -- POOLS -----------------------------------------------------------------------------------

POOL_COLUMNS = columns(
    "ssiiiiiiiiiiiiissi", "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
    "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle",
    "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
    "load_balance_hosts", "pool_size")


#: Client and server counts add up; the longest wait wins; the pool's settings are shared.
_POOL_MERGE = merge.keyed(2, [merge.total] * 11 + [merge.longest_wait(13)] * 2
                          + [merge.first] * 3)


@stats_allowed
@on_every_worker(_POOL_MERGE)
def show_pools(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(POOL_COLUMNS, pool_table(console.app))


def pool_table(app: "App") -> List[List[Any]]:
    """SHOW POOLS' rows (:data:`POOL_COLUMNS`)."""
    rows = [_pool_row(pool) for pool in app.registry.pools()]
    rows.append(_admin_pool_row(app))
    return sorted(rows, key=lambda row: (row[0], row[1]))


def _pool_row(pool: "Pool") -> List[Any]:
    waiting = pool.waiting_clients()
    longest = time.monotonic() - min(waiting.values()) if waiting else 0.0
    seconds, micros = split_seconds(longest)
    # Cancel requests are forwarded at once, never queued, so their lists are always empty.
    return [pool.database.name, pool.user.name, len(pool.clients - waiting.keys()), len(waiting),
            0, 0, len(pool.active), 0, len(pool.being_canceled), len(pool.idle), 0,
            len(pool.tested), len(pool.login),
            seconds, micros, pool.limits.pool_mode(), _load_balance_hosts(pool.database),
            pool.limits.pool_size()]


def _admin_pool_row(app: "App") -> List[Any]:
    return [ADMIN_DATABASE, ADMIN_USER, len(admin_clients(app)), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, ADMIN_POOL_MODE, None, ADMIN_POOL_SIZE]


def split_seconds(seconds: float) -> Tuple[int, int]:
    """Whole seconds and the microseconds beyond them (``maxwait``, ``maxwait_us``)."""
    micros = int(seconds * 1_000_000)
    return micros // 1_000_000, micros % 1_000_000


# -- USERS -----------------------------------------------------------------------------------

USER_COLUMNS = columns(
    "ssssiiii", "name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
    "current_connections", "max_user_client_connections", "current_client_connections")


_USER_MERGE = merge.keyed(1, [merge.first] * 4 + [merge.total, merge.first, merge.total])


@stats_allowed
@on_every_worker(_USER_MERGE)
def show_users(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    app = console.app
    # Clients count for the user they logged in as, whatever forced user their pool has,
    # console clients included; servers for the user they log in as.
    clients: Dict[str, int] = {}
    for client in app.clients:
        clients[client.user] = clients.get(client.user, 0) + 1
    users = app.registry.users
    names = set(users) | app.user_store.names() | {ADMIN_USER}
    rows = [_user_row(app, name, users[name].server_count() if name in users else 0,
                      clients.get(name, 0)) for name in names]
    return show(USER_COLUMNS, sorted(rows, key=lambda row: row[0]))


def _user_row(app: "App", name: str, servers: int, clients: int) -> List[Any]:
    """The user's own settings (SET USER first, then [users]) and the caps in force."""
    config, overrides = app.config, app.registry.overrides

    def value(key: str) -> Optional[Any]:
        return user_value(config, overrides, name, key)

    return [name, _padded(value("pool_size")), _padded(value("reserve_pool_size")),
            value("pool_mode"), user_cap(config, overrides, name, "max_user_connections"),
            servers, user_cap(config, overrides, name, "max_user_client_connections"),
            clients]


def _padded(number: Optional[int]) -> str:
    """PgBouncer prints these two text columns with ``%9d``, and as "" when unset."""
    return "" if number is None else f"{number:9d}"


# -- STATS -----------------------------------------------------------------------------------

_STATS_NAMES = ("server_assignment_count", "xact_count", "query_count", "received", "sent",
                "xact_time", "query_time", "wait_time", "client_parse_count",
                "server_parse_count", "bind_count", "client_login_count")
_AVERAGE_NAMES = _STATS_NAMES[:3] + ("recv",) + _STATS_NAMES[4:]
STATS_COLUMNS = columns("s" + "N" * 2 * len(FIELDS), "database",
                        *("total_" + name for name in _STATS_NAMES),
                        *("avg_" + name for name in _AVERAGE_NAMES))
STATS_TOTALS_COLUMNS = columns("s" + "N" * len(FIELDS), "database", *FIELDS)
# PgBouncer's quirk: only the prepared-statement columns carry the avg_ prefix here.
STATS_AVERAGES_COLUMNS = columns(
    "s" + "N" * len(FIELDS), "database",
    *(("avg_" + name) if name.endswith(("parse_count", "bind_count")) else name
      for name in FIELDS))
_TOTALS_NAMES = ("server_assignment_count", "xact_count", "query_count", "client_bytes",
                 "server_bytes", "xact_time", "query_time", "wait_time", "ps_client_parse_count",
                 "ps_server_parse_count", "ps_bind_count", "client_login_count")
TOTALS_COLUMNS = columns("sN", "name", "value")
_TOTALS_ROW_NAMES = (*("total_" + name for name in _TOTALS_NAMES),
                     *("avg_" + name for name in _TOTALS_NAMES))


def _stats_rules(offset: int) -> List[merge.Rule]:
    """How the totals and then the averages from column *offset* on merge, across databases
    or workers: totals add up, averages as :func:`~bouncer.admin.merge.average_rules`."""
    return [merge.total] * len(FIELDS) + merge.average_rules(offset + len(FIELDS))


def _database_stats(app: "App") -> Iterator[Sequence[Any]]:
    """``(name, totals, averages)`` per database, sorted, the console's own included."""
    zeros = dict.fromkeys(FIELDS, 0)
    found = [(db.name, db.stats.snapshot()) for db in app.registry.databases.values()]
    found.append((ADMIN_DATABASE, app.admin_stats.snapshot()))
    for name, totals in sorted(found):
        averages = app.stats_period.current_averages.get(name, zeros)
        yield name, totals, [averages[field] for field in FIELDS]


@stats_allowed
@on_every_worker(merge.keyed(1, _stats_rules(1)))
def show_stats(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(STATS_COLUMNS, [[name, *totals, *averages]
                                for name, totals, averages in _database_stats(console.app)])


@stats_allowed
@on_every_worker(merge.keyed(1, [merge.total] * len(FIELDS)))
def show_stats_totals(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(STATS_TOTALS_COLUMNS, stats_totals_table(console.app))


def stats_totals_table(app: "App") -> List[List[Any]]:
    """SHOW STATS_TOTALS' rows (:data:`STATS_TOTALS_COLUMNS`): totals since start."""
    return [[name, *totals] for name, totals, _ in _database_stats(app)]


@stats_allowed
@on_every_worker(merge.keyed(1, merge.average_rules(1)))
def show_stats_averages(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(STATS_AVERAGES_COLUMNS, [[name, *averages]
                                         for name, _, averages in _database_stats(console.app)])


def _merge_totals(answers: Sequence[merge.Answer]) -> Result:
    """SHOW TOTALS of several workers: their values merge as the databases' do in one."""
    local, results, notices = merge.results_of(answers)
    values = merge.merge_rows((), [[value for _, value in result.rows] for result in results],
                              _stats_rules(0))
    return Result(local.tag, local.columns, list(map(list, zip(_TOTALS_ROW_NAMES, values))),
                  notices)


@stats_allowed
@on_every_worker(_merge_totals)
def show_totals(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    per_database = [[*totals, *averages]
                    for _, totals, averages in _database_stats(console.app)]
    values = merge.merge_rows((), per_database, _stats_rules(0))
    return show(TOTALS_COLUMNS, list(map(list, zip(_TOTALS_ROW_NAMES, values))))


# -- LISTS, MEM, STATE -----------------------------------------------------------------------

LISTS_COLUMNS = columns("si", "list", "items")
MEM_COLUMNS = columns("siiii", "name", "size", "used", "free", "memtotal")
STATE_COLUMNS = columns("ss", "key", "value")


#: Lists of things every worker knows (its databases, users...): the largest count; lists of
#: connections: the sum.
_SHARED_LISTS = frozenset({"databases", "users", "peers", "pools", "dns_names", "dns_zones"})


def _list_items(rows: Sequence[merge.Row], column: int) -> Any:
    rule = merge.largest if rows[0][0] in _SHARED_LISTS else merge.total
    return rule(rows, column)


@stats_allowed
@on_every_worker(merge.keyed(1, [_list_items], sort=False))
def show_lists(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(LISTS_COLUMNS, lists_table(console.app))


def lists_table(app: "App") -> List[Tuple[str, int]]:
    """SHOW LISTS' rows (:data:`LISTS_COLUMNS`)."""
    clients = list(app.clients)
    users = set(app.registry.users) | {ADMIN_USER}
    # No object caches: nothing is ever "free"; DNS has no zones and no queued queries.
    counts = [("databases", len(app.registry.databases) + 1), ("users", len(users)),
              ("peers", len(app.config.peers)), ("pools", _pool_count(app) + 1),
              ("peer_pools", 0), ("free_clients", 0), ("used_clients", len(clients)),
              ("login_clients", sum(1 for client in clients if not client.logged_in)),
              ("free_servers", 0), ("used_servers", _server_count(app)),
              ("dns_names", len(app.resolver.entries())), ("dns_zones", 0),
              ("dns_queries", 0), ("dns_pending", 0)]
    return counts


def _pool_count(app: "App") -> int:
    return sum(1 for _ in app.registry.pools())


def _server_count(app: "App") -> int:
    return sum(pool.server_count() for pool in app.registry.pools())


@stats_allowed
@on_every_worker(merge.keyed(1, [merge.total] * 4, sort=False))  # each process its own objects
def show_mem(console: "Console", args: str) -> Result:
    """PgBouncer's slab caches; Python has none, so only the live object counts are real."""
    grammar.no_arguments(args)
    app = console.app
    used = [("user_cache", len(app.registry.users)), ("db_cache", len(app.registry.databases)),
            ("pool_cache", _pool_count(app)), ("server_cache", _server_count(app)),
            ("client_cache", len(app.clients))]
    return show(MEM_COLUMNS, [[name, 0, count, 0, 0] for name, count in used])


def _pooler_state(rows: Sequence[merge.Row], column: int) -> Any:
    """``active`` when every worker is; ``paused`` and ``suspended`` when any worker is: its
    clients wait (a worker restarted since the PAUSE is not paused)."""
    values = {row[column] for row in rows}
    if rows[0][0] == "active":
        return "yes" if values == {"yes"} else "no"
    return "yes" if "yes" in values else "no"


@stats_allowed
@on_every_worker(merge.keyed(1, [_pooler_state], sort=False))
def show_state(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(STATE_COLUMNS, [[key, "yes" if value else "no"]
                                for key, value in process_state(console.app)])


def process_state(app: "App") -> List[Tuple[str, bool]]:
    """SHOW STATE's rows as booleans: ``active``, ``paused``, ``suspended``."""
    # PgBouncer has one pause mode: SUSPEND is not also "paused".
    paused, suspended = app.paused and not app.suspended, app.suspended
    return [("active", not (paused or suspended)), ("paused", paused),
            ("suspended", suspended)]


# -- DNS, PEERS ------------------------------------------------------------------------------

DNS_HOSTS_COLUMNS = columns("sqs", "hostname", "ttl", "addrs")
DNS_ZONES_COLUMNS = columns("sqi", "zonename", "serial", "count")
PEERS_COLUMNS = columns("isii", "peer_id", "host", "port", "pool_size")
PEER_POOLS_COLUMNS = columns("iiiii", "peer_id", "cl_active_cancel_req",
                             "cl_waiting_cancel_req", "sv_active_cancel", "sv_login")


def _freshest(rows: Sequence[merge.Row], column: int) -> Any:
    """A host each worker resolved on its own: the answer of the one that resolved it last,
    which has the longest ``ttl`` left."""
    return max(rows, key=lambda row: row[1])[column]


@stats_allowed
@on_every_worker(merge.keyed(1, [_freshest, _freshest], sort=False))
def show_dns_hosts(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    rows = [[host, int(ttl), ",".join(_address_text(sockaddr) for _, sockaddr in addresses)]
            for host, ttl, addresses in console.app.resolver.entries()]
    return show(DNS_HOSTS_COLUMNS, rows)


def _address_text(sockaddr: Any) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6, as PgBouncer writes addresses."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@stats_allowed
def show_dns_zones(console: "Console", args: str) -> Result:
    """Zone serial checks (dns_zone_check_period) are not implemented: no zones to show."""
    grammar.no_arguments(args)
    return show(DNS_ZONES_COLUMNS, [])


@stats_allowed
def show_peers(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    config = console.app.config
    rows = [[peer.peer_id, peer.host, peer.port, peer_pool_size(config, peer)]
            for _, peer in sorted(config.peers.items())]
    return show(PEERS_COLUMNS, rows)


@stats_allowed
@on_every_worker(merge.keyed(1, [merge.total] * 4))
def show_peer_pools(console: "Console", args: str) -> Result:
    """One row per peer a cancel was forwarded to.  Each forward has a connection of its own
    from the moment it holds a slot, so the active columns agree and none is logging in."""
    grammar.no_arguments(args)
    pools = console.app.cancels.peer_pools
    rows = [[peer_id, pool.active, pool.waiting, pool.active, 0]
            for peer_id, pool in sorted(pools.items())]
    return show(PEER_POOLS_COLUMNS, rows)


# -- CONFIG, VERSION, parameters -------------------------------------------------------------

CONFIG_COLUMNS = columns("ssss", "key", "value", "default", "changeable")
VERSION_COLUMNS = columns("s", "version")


@stats_allowed
def show_config(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(CONFIG_COLUMNS, config_table(console.app))


def config_table(app: "App") -> List[List[Any]]:
    """SHOW CONFIG's rows (:data:`CONFIG_COLUMNS`): every setting, the plugins' declared ones
    as ``plugin.NAME.key`` (changeable by a RELOAD when reloadable), sorted by key."""
    rows = [[name, format_value(setting, value), setting.shown_default,
             "yes" if setting.reloadable else "no"]
            for name, setting, value in all_settings(app.config)]
    # bouncer's own rows, after PgBouncer's: what the TLS settings add up to, in words.
    rows += [[f"{side}_tls_policy",
              describe_policy(TlsSettings.from_config(app.config, side)), "", "no"]
             for side in ("client", "server")]
    return sorted(rows)


@stats_allowed
def show_version(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(VERSION_COLUMNS, [[VERSION_STRING]])


@stats_allowed
def show_parameter(console: "Console", args: str) -> Result:
    """``SHOW <name>`` for anything else: the faked driver parameters, or invalid."""
    name = grammar.optional_name(args)
    canonical = (name or "").lower()
    if canonical not in FAKE_PARAMETERS:
        raise InvalidCommand()
    return show(columns("s", canonical), [[FAKE_PARAMETERS[canonical]]])


COMMANDS = {
    "SHOW": show_parameter,
    "SHOW DATABASES": show_databases,
    "SHOW POOLS": show_pools,
    "SHOW USERS": show_users,
    "SHOW STATS": show_stats,
    "SHOW STATS_TOTALS": show_stats_totals,
    "SHOW STATS_AVERAGES": show_stats_averages,
    "SHOW TOTALS": show_totals,
    "SHOW LISTS": show_lists,
    "SHOW MEM": show_mem,
    "SHOW STATE": show_state,
    "SHOW DNS_HOSTS": show_dns_hosts,
    "SHOW DNS_ZONES": show_dns_zones,
    "SHOW PEERS": show_peers,
    "SHOW PEER_POOLS": show_peer_pools,
    "SHOW CONFIG": show_config,
    "SHOW VERSION": show_version,
}
