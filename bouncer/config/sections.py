"""Turn one ``[databases]``, ``[users]``, ``[pools]`` or ``[peers]`` line into a model object.

Each section has a table of the connection-string keys it accepts; any other key is an
error, as in PgBouncer.  Functions raise :class:`ValueError` with a reason; the loader
adds file, line and key, and the admin console reuses the same functions for ``SET``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from bouncer.config.connstr import parse_connstr
from bouncer.config.kinds import parse_int, parse_time
from bouncer.config.model import DatabaseDef, PeerDef, PoolDef, UserDef
from bouncer.config.settings import POOL_MODES

Converter = Callable[[str], Any]

#: The name of the admin console's database; no [databases] entry may take it.
ADMIN_DATABASE = "pgbouncer"
#: Startup parameters a database line may ask the server for, by the name sent.
STARTUP_PARAMS: Mapping[str, str] = {
    "client_encoding": "client_encoding",
    "datestyle": "DateStyle",
    "timezone": "TimeZone",
    "application_name": "application_name",
}


def _text(raw: str) -> str:
    return raw


def _port(raw: str) -> int:
    port = parse_int(raw)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def _hosts(raw: str) -> Tuple[str, ...]:
    hosts = tuple(host.strip() for host in raw.split(","))
    if not all(hosts):
        raise ValueError(f"empty entry in host list {raw!r}")
    return hosts


def _optional_count(raw: str) -> Optional[int]:
    # PgBouncer uses -1 internally for "not set"; accept it as written.
    value = parse_int(raw)
    if value < -1:
        raise ValueError(f"{value} is negative (use -1 for 'not set')")
    return None if value == -1 else value


def _optional_time(raw: str) -> Optional[float]:
    return None if raw.strip() == "-1" else parse_time(raw)


def _choice(choices: Sequence[str]) -> Converter:
    def convert(raw: str) -> str:
        word = raw.strip().lower()
        if word not in choices:
            raise ValueError(f"invalid value {raw!r}: expected one of {', '.join(choices)}")
        return word
    return convert


_DATABASE_FIELDS: Mapping[str, Tuple[str, Converter]] = {
    "dbname": ("dbname", _text),
    "host": ("host", _hosts),
    "port": ("port", _port),
    "user": ("user", _text),
    "password": ("password", _text),
    "auth_user": ("auth_user", _text),
    "auth_query": ("auth_query", _text),
    "auth_dbname": ("auth_dbname", _text),
    "pool_size": ("pool_size", _optional_count),
    "min_pool_size": ("min_pool_size", _optional_count),
    "reserve_pool_size": ("reserve_pool_size", _optional_count),
    "reserve_pool": ("reserve_pool_size", _optional_count),
    "connect_query": ("connect_query", _text),
    "pool_mode": ("pool_mode", _choice(POOL_MODES)),
    "max_db_connections": ("max_db_connections", _optional_count),
    "max_db_client_connections": ("max_db_client_connections", _optional_count),
    "server_lifetime": ("server_lifetime", _optional_time),
    "query_wait_timeout": ("query_wait_timeout", _optional_time),
    "load_balance_hosts": ("load_balance_hosts", _choice(("round-robin", "disable"))),
}

_USER_FIELDS: Mapping[str, Tuple[str, Converter]] = {
    name: (name, convert) for name, convert in (
        ("pool_size", _optional_count),
        ("reserve_pool_size", _optional_count),
        ("pool_mode", _choice(POOL_MODES)),
        ("max_user_connections", _optional_count),
        ("max_user_client_connections", _optional_count),
        ("query_timeout", _optional_time),
        ("query_wait_timeout", _optional_time),
        ("idle_transaction_timeout", _optional_time),
        ("transaction_timeout", _optional_time),
        ("client_idle_timeout", _optional_time),
    )
}

_POOL_FIELDS: Mapping[str, Tuple[str, Converter]] = {"pool_size": ("pool_size", _optional_count)}

_PEER_FIELDS: Mapping[str, Tuple[str, Converter]] = {
    "host": ("host", _text),
    "port": ("port", _port),
    "pool_size": ("pool_size", _optional_count),
}


def _convert(pairs: Mapping[str, str], fields: Mapping[str, Tuple[str, Converter]],
             what: str) -> Dict[str, Any]:
    """Typed values by field name; a key missing from ``fields`` is an error."""
    values: Dict[str, Any] = {}
    for key, raw in pairs.items():
        if key not in fields:
            raise ValueError(f"unrecognized {what} parameter: {key}")
        name, convert = fields[key]
        try:
            values[name] = convert(raw)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return values


def parse_database(name: str, text: str) -> DatabaseDef:
    """A ``[databases]`` line: ``name = host=... port=... pool_size=...``."""
    if name == ADMIN_DATABASE:
        raise ValueError(f'database name "{ADMIN_DATABASE}" is reserved for the admin console')
    pairs = parse_connstr(text)
    startup_params = {STARTUP_PARAMS[key]: pairs.pop(key)
                      for key in list(pairs) if key in STARTUP_PARAMS}
    values = _convert(pairs, _DATABASE_FIELDS, "connection")
    return DatabaseDef(name=name, startup_params=startup_params, **values)


def parse_user_options(text: str) -> Dict[str, Any]:
    """A ``[users]`` value (or ``SET USER`` argument) as ``UserDef`` keyword arguments.

    Every field is present; keys not written are None ("inherit"), so applying the result
    resets what the text leaves out, as cf-pgbouncer's ``SET USER`` does.
    """
    values: Dict[str, Any] = dict.fromkeys(_USER_FIELDS)
    values.update(_convert(parse_connstr(text), _USER_FIELDS, "user"))
    return values


def parse_user(name: str, text: str) -> UserDef:
    """A ``[users]`` line: ``name = pool_mode=... max_user_connections=...``."""
    return UserDef(name=name, **parse_user_options(text))


def parse_pool_key(key: str) -> Tuple[str, str]:
    """``user.database`` -> ``(user, database)``: exactly one dot, both sides non-empty."""
    user, dot, database = key.partition(".")
    if not dot or not user or not database or "." in database:
        raise ValueError(f"pool name {key!r} must be user.database, with exactly one dot")
    return user, database


def parse_pool_options(text: str) -> Dict[str, Any]:
    """A ``[pools]`` value (or ``SET POOL`` argument): ``pool_size=N``, -1 = no override."""
    values = _convert(parse_connstr(text), _POOL_FIELDS, "pool")
    if "pool_size" not in values:
        raise ValueError("pool settings need pool_size=N")
    return values


def parse_pool(key: str, text: str) -> PoolDef:
    """A ``[pools]`` line: ``user.database = pool_size=N``."""
    user, database = parse_pool_key(key)
    return PoolDef(user=user, database=database, **parse_pool_options(text))


def parse_peer(key: str, text: str) -> PeerDef:
    """A ``[peers]`` line: ``peer_id = host=... port=... pool_size=...``."""
    peer_id = parse_int(key)
    if not 1 <= peer_id <= 16383:
        raise ValueError(f"peer id {peer_id} is out of range 1-16383")
    return PeerDef(peer_id=peer_id, **_convert(parse_connstr(text), _PEER_FIELDS, "peer"))
