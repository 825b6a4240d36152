"""The one table of ``[pgbouncer]`` settings: name, kind, default, reloadability and doc.

It drives parsing (loader), SHOW CONFIG (admin), the man-page check and ``--check``.  Names
and defaults are PgBouncer 1.25's, plus a few of bouncer's own at the end of the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple, TypedDict

from bouncer.config.kinds import KINDS, format_value, parse_value

__all__ = ["Setting", "SETTINGS", "SETTINGS_BY_NAME", "format_value", "parse_value",
           "POOL_MODES", "SSLMODES", "AUTH_TYPES"]

POOL_MODES = ("session", "transaction", "statement")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
AUTH_TYPES = ("cert", "md5", "scram-sha-256", "plain", "trust", "any", "hba", "ldap", "pam")

#: PgBouncer 1.24.1+'s default, schema-qualified so a client's search_path cannot
#: redirect it (the CVE-2025-12819 class of problem).
DEFAULT_AUTH_QUERY = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword"
                      " END FROM pg_catalog.pg_authid WHERE rolname=$1 AND rolcanlogin")


@dataclass(frozen=True)
class Setting:
    """One ``[pgbouncer]`` key.

    :param kind: one of ``str``, ``int``, ``bool``, ``time`` (seconds, float), ``enum``,
        ``octal`` (a file mode) or ``list`` (comma-separated, a tuple of str).
    :param default: the typed default.
    :param reloadable: False when PgBouncer needs a restart to apply it (``CF_NO_RELOAD``).
    :param supported: False when bouncer accepts and types the key but does not honour it
        yet; the loader warns when a file sets it to anything but zero/empty.
    :param default_text: SHOW CONFIG's rendering of the default, when the plain
        formatting of ``default`` would not match PgBouncer's.
    :param aliases: other names PgBouncer accepts for this key.
    """

    name: str
    kind: str
    default: Any
    reloadable: bool
    doc: str
    choices: Tuple[str, ...] = ()
    min: Optional[float] = None
    max: Optional[float] = None
    supported: bool = True
    default_text: Optional[str] = None
    aliases: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.name}: unknown kind {self.kind!r}")
        if (self.kind == "enum") != bool(self.choices):
            raise ValueError(f"setting {self.name}: choices go with kind 'enum' only")

    @property
    def shown_default(self) -> str:
        """The default as SHOW CONFIG's ``default`` column shows it."""
        if self.default_text is not None:
            return self.default_text
        return format_value(self, self.default)


def _s(name: str, kind: str, default: Any, doc: str, *, reload: bool = True,
       **extra: Any) -> Setting:
    """Table-row shorthand: most settings are reloadable and have no extras."""
    return Setting(name=name, kind=kind, default=default, reloadable=reload, doc=doc, **extra)


class _Bounds(TypedDict, total=False):
    """Setting's min and max, as keyword arguments of _s()."""

    min: float
    max: float


_COUNT: _Bounds = {"min": 0}
_PORT: _Bounds = {"min": 1, "max": 65535}

_TABLE = (
    # Generic
    _s("logfile", "str", "", "log file, reopened on SIGHUP/RELOAD"),
    _s("pidfile", "str", "", "PID file; required for -d", reload=False),
    _s("listen_addr", "list", (), "TCP addresses to listen on (* = all; unset = unix socket only)",
       reload=False),
    _s("listen_port", "int", 6432, "TCP port, also the unix socket's name", reload=False, **_PORT),
    _s("unix_socket_dir", "str", "/tmp", "unix socket directory (empty disables, @ = abstract)",
       reload=False),
    _s("unix_socket_mode", "octal", 0o777, "file mode of the unix socket", reload=False),
    _s("unix_socket_group", "str", "", "group of the unix socket", reload=False),
    _s("user", "str", "", "unix user to switch to after startup", reload=False),
    _s("pool_mode", "enum", "session", "when a server connection returns to the pool",
       choices=POOL_MODES),
    _s("max_client_conn", "int", 100, "maximum number of client connections", **_COUNT),
    _s("default_pool_size", "int", 20, "server connections per user/database pair (0 = unlimited)",
       **_COUNT),
    _s("min_pool_size", "int", 0, "keep at least this many server connections per pool", **_COUNT),
    _s("reserve_pool_size", "int", 0, "extra connections a pool may use after reserve_pool_timeout",
       aliases=("reserve_pool",), **_COUNT),
    _s("reserve_pool_timeout", "time", 5.0, "wait this long before using the reserve pool"),
    _s("max_db_connections", "int", 0, "server connections per database (0 = unlimited)", **_COUNT),
    _s("max_db_client_connections", "int", 0, "client connections per database (0 = unlimited)",
       **_COUNT),
    _s("max_user_connections", "int", 0, "server connections per user (0 = unlimited)", **_COUNT),
    _s("max_user_client_connections", "int", 0, "client connections per user (0 = unlimited)",
       **_COUNT),
    _s("server_round_robin", "bool", False, "reuse server connections round-robin instead of LIFO"),
    _s("track_extra_parameters", "list", ("IntervalStyle",),
       "reported parameters tracked per client besides the built-in ones", reload=False),
    _s("ignore_startup_parameters", "list", (), "startup parameters to accept and ignore"),
    _s("peer_id", "int", 0, "this process's id among peers (0 = peering off)", min=0, max=16383),
    _s("disable_pqexec", "bool", False, "refuse the simple query protocol", reload=False),
    _s("application_name_add_host", "bool", False, "append client address to application_name"),
    _s("conffile", "str", "", "the configuration file read on RELOAD (default: the one loaded)"),
    _s("service_name", "str", "pgbouncer", "Windows service name", reload=False,
       aliases=("job_name",), supported=False),
    _s("stats_period", "int", 60, "seconds between statistics averages and log lines", min=1),
    _s("max_prepared_statements", "int", 200,
       "protocol-level prepared statements tracked per server connection (0 = off)", **_COUNT),
    _s("scram_iterations", "int", 4096, "iterations when computing SCRAM secrets", min=1),
    # Authentication
    _s("auth_type", "enum", "md5", "how clients authenticate", choices=AUTH_TYPES),
    _s("auth_hba_file", "str", "", "HBA file used when auth_type is hba"),
    _s("auth_ident_file", "str", "", "user name map file for cert/peer authentication"),
    _s("auth_file", "str", "", "userlist file with user names and passwords"),
    _s("auth_user", "str", "", "user that runs auth_query for users not in auth_file"),
    _s("auth_query", "str", DEFAULT_AUTH_QUERY, "query returning a user's name and password"),
    _s("auth_dbname", "str", "", "database in which auth_query runs"),
    _s("auth_ldap_options", "str", "", "LDAP options for auth_type ldap", supported=False),
    # Logging
    _s("syslog", "bool", False, "also log to syslog"),
    _s("syslog_ident", "str", "pgbouncer", "program name sent to syslog"),
    _s("syslog_facility", "str", "daemon", "syslog facility"),
    _s("log_connections", "bool", True, "log successful logins"),
    _s("log_disconnections", "bool", True, "log disconnections with reasons"),
    _s("log_pooler_errors", "bool", True, "log errors the pooler sends to clients"),
    _s("log_stats", "bool", True, "write aggregated statistics to the log every stats_period"),
    _s("verbose", "int", 0, "log verbosity, as -v on the command line", **_COUNT),
    # Console access
    _s("admin_users", "list", (), "users allowed to run every console command"),
    _s("stats_users", "list", (), "users allowed to run read-only console commands"),
    # Connection sanity checks, timeouts
    _s("server_reset_query", "str", "DISCARD ALL",
       "query run when a session-mode server is released"),
    _s("server_reset_query_always", "bool", False, "run server_reset_query in every pool mode"),
    _s("server_check_delay", "time", 30.0,
       "how long a released server may be reused without running server_check_query"),
    _s("server_check_query", "str", "<empty>",
       "health check query (<empty> sends an empty query, empty string disables)"),
    _s("server_fast_close", "bool", False,
       "close session-mode servers marked close_needed once their transaction is over"),
    _s("server_lifetime", "time", 3600.0, "close unused server connections older than this"),
    _s("server_idle_timeout", "time", 600.0, "close server connections idle longer than this"),
    _s("server_connect_timeout", "time", 15.0,
       "limit for connecting to and logging in to a server"),
    _s("server_login_retry", "time", 15.0, "wait this long after a failed server login"),
    _s("client_login_timeout", "time", 60.0, "disconnect clients that do not log in within this"),
    _s("autodb_idle_timeout", "time", 3600.0, "free pools created through * after this idle time"),
    _s("pool_idle_timeout", "time", 0.0, "free empty pools after this idle time (0 = never)"),
    _s("dns_max_ttl", "time", 15.0, "how long DNS answers are cached"),
    _s("dns_nxdomain_ttl", "time", 15.0, "how long DNS errors and NXDOMAIN are cached"),
    _s("dns_zone_check_period", "time", 0.0, "period of DNS zone serial checks (0 = off)",
       supported=False),
    _s("resolv_conf", "str", "", "custom resolv.conf for DNS lookups", reload=False,
       supported=False),
    _s("query_wait_notify", "time", 5.0, "notify a queued client after this wait (0 = never)"),
    _s("login_notify_message", "str", "", "NOTICE sent to a client after login"),
    # TLS
    _s("client_tls_sslmode", "enum", "disable", "TLS mode for client connections",
       choices=SSLMODES),
    _s("client_tls_key_file", "str", "", "private key for client connections"),
    _s("client_tls_cert_file", "str", "", "certificate for client connections"),
    _s("client_tls_ca_file", "str", "", "CA that client certificates must chain to"),
    _s("client_tls_protocols", "str", "secure", "TLS versions allowed for clients"),
    _s("client_tls_ciphers", "str", "default", "TLS 1.2 ciphers allowed for clients"),
    _s("client_tls13_ciphers", "str", "", "TLS 1.3 ciphers allowed for clients"),
    _s("client_tls_ecdhcurve", "str", "auto", "ECDH curve for client connections"),
    _s("client_tls_dheparams", "str", "auto", "DHE parameters for client connections"),
    _s("server_tls_sslmode", "enum", "prefer", "TLS mode for server connections", choices=SSLMODES),
    _s("server_tls_ca_file", "str", "", "CA that server certificates must chain to"),
    _s("server_tls_key_file", "str", "", "private key presented to servers"),
    _s("server_tls_cert_file", "str", "", "certificate presented to servers"),
    _s("server_tls_protocols", "str", "secure", "TLS versions allowed to servers"),
    _s("server_tls_ciphers", "str", "default", "TLS 1.2 ciphers allowed to servers"),
    _s("server_tls13_ciphers", "str", "", "TLS 1.3 ciphers allowed to servers"),
    # Dangerous timeouts
    _s("query_timeout", "time", 0.0, "cancel queries running longer than this (0 = off)"),
    _s("query_wait_timeout", "time", 120.0, "disconnect clients queued longer than this (0 = off)"),
    _s("cancel_wait_timeout", "time", 10.0,
       "drop cancel requests queued longer than this (0 = off)"),
    _s("client_idle_timeout", "time", 0.0, "close client connections idle longer than this"),
    _s("idle_transaction_timeout", "time", 0.0,
       "disconnect clients idle in a transaction this long"),
    _s("transaction_timeout", "time", 0.0, "disconnect clients in a transaction this long"),
    _s("suspend_timeout", "time", 10.0, "how long SUSPEND waits for buffers to flush"),
    # Low-level network
    _s("pkt_buf", "int", 4096, "internal packet buffer size", reload=False, supported=False,
       **_COUNT),
    _s("max_packet_size", "int", 2147483647, "largest PostgreSQL packet let through",
       min=0, max=2147483647),
    _s("listen_backlog", "int", 128, "backlog argument of listen(2)", reload=False,
       **_COUNT),
    _s("sbuf_loopcnt", "int", 5, "packets processed per connection before switching",
       supported=False, **_COUNT),
    _s("so_reuseport", "bool", False, "set SO_REUSEPORT on listening sockets", reload=False),
    _s("tcp_defer_accept", "bool", True, "set TCP_DEFER_ACCEPT on listening sockets"),
    _s("tcp_socket_buffer", "int", 0, "socket buffer size (0 = OS default)", **_COUNT),
    _s("tcp_keepalive", "bool", True, "enable TCP keepalive"),
    _s("tcp_keepcnt", "int", 0, "TCP_KEEPCNT (0 = OS default)", **_COUNT),
    _s("tcp_keepidle", "int", 0, "TCP_KEEPIDLE in seconds (0 = OS default)", **_COUNT),
    _s("tcp_keepintvl", "int", 0, "TCP_KEEPINTVL in seconds (0 = OS default)", **_COUNT),
    _s("tcp_user_timeout", "int", 0, "TCP_USER_TIMEOUT in milliseconds (0 = OS default)", **_COUNT),
    # bouncer's own
    _s("limit_shrink_timeout", "time", 10.0,
       "how long an active server connection may finish its transaction when a lowered limit "
       "evicts it"),
    _s("plugins", "list", (), "extra plugin modules to load by import path", reload=False),
    _s("disable_plugins", "list", (), "plugins (built-in or installed) not to load", reload=False),
)

#: Every setting, in alphabetical order: the order of PgBouncer's SHOW CONFIG.
SETTINGS: Tuple[Setting, ...] = tuple(sorted(_TABLE, key=lambda setting: setting.name))


def _by_name(settings: Tuple[Setting, ...]) -> Mapping[str, Setting]:
    table: Dict[str, Setting] = {}
    for setting in settings:
        for name in (setting.name,) + setting.aliases:
            if name in table:
                raise ValueError(f"setting {name} is defined twice")
            table[name] = setting
    return MappingProxyType(table)


#: Lower-case name or alias -> :class:`Setting`; aliases map to their target.
SETTINGS_BY_NAME: Mapping[str, Setting] = _by_name(SETTINGS)
