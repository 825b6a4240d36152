"""The settings of ``[pgbouncer]`` as typed attributes of a configuration.

:class:`SettingAttributes` declares one attribute per row of
:data:`bouncer.config.settings.SETTINGS`, typed by its kind, so that ``config.listen_port`` is
an ``int`` to the type checker and a misspelt setting is an error it reports.  The values are
put in place by :class:`bouncer.config.model.Config`.  tests/unit/test_settings.py checks that
this list and the table agree: a setting added to one and not the other fails it.
"""
from __future__ import annotations

from typing import Tuple

#: The Python type of a setting's value, by its kind.
KIND_TYPES = {"str": "str", "int": "int", "time": "float", "bool": "bool",
              "list": "Tuple[str, ...]", "enum": "str", "octal": "int", "int_or_auto": "int"}


class SettingAttributes:
    """Every setting, as the type checker sees it on a configuration (annotations only)."""

    admin_users: Tuple[str, ...]
    application_name_add_host: bool
    auth_dbname: str
    auth_file: str
    auth_hba_file: str
    auth_ident_file: str
    auth_ldap_options: str
    auth_query: str
    auth_type: str
    auth_user: str
    autodb_idle_timeout: float
    cancel_wait_timeout: float
    client_idle_timeout: float
    client_login_timeout: float
    client_tls13_ciphers: str
    client_tls_ca_file: str
    client_tls_cert_file: str
    client_tls_ciphers: str
    client_tls_dheparams: str
    client_tls_ecdhcurve: str
    client_tls_key_file: str
    client_tls_protocols: str
    client_tls_sslmode: str
    conffile: str
    default_pool_size: int
    disable_plugins: Tuple[str, ...]
    disable_pqexec: bool
    dns_max_ttl: float
    dns_nxdomain_ttl: float
    dns_zone_check_period: float
    idle_transaction_timeout: float
    ignore_startup_parameters: Tuple[str, ...]
    limit_shrink_timeout: float
    listen_addr: Tuple[str, ...]
    listen_backlog: int
    listen_port: int
    log_connections: bool
    log_disconnections: bool
    log_pooler_errors: bool
    log_stats: bool
    logfile: str
    login_notify_message: str
    max_client_conn: int
    max_db_client_connections: int
    max_db_connections: int
    max_packet_size: int
    max_prepared_statements: int
    max_user_client_connections: int
    max_user_connections: int
    min_pool_size: int
    peer_id: int
    pidfile: str
    pkt_buf: int
    plugins: Tuple[str, ...]
    pool_idle_timeout: float
    pool_mode: str
    query_timeout: float
    query_wait_notify: float
    query_wait_timeout: float
    reserve_pool_size: int
    reserve_pool_timeout: float
    resolv_conf: str
    sbuf_loopcnt: int
    scram_iterations: int
    server_check_delay: float
    server_check_query: str
    server_connect_timeout: float
    server_fast_close: bool
    server_idle_timeout: float
    server_lifetime: float
    server_login_retry: float
    server_reset_query: str
    server_reset_query_always: bool
    server_round_robin: bool
    server_tls13_ciphers: str
    server_tls_ca_file: str
    server_tls_cert_file: str
    server_tls_ciphers: str
    server_tls_key_file: str
    server_tls_protocols: str
    server_tls_sslmode: str
    service_name: str
    so_reuseport: bool
    stats_period: int
    stats_users: Tuple[str, ...]
    suspend_timeout: float
    syslog: bool
    syslog_facility: str
    syslog_ident: str
    tcp_defer_accept: bool
    tcp_keepalive: bool
    tcp_keepcnt: int
    tcp_keepidle: int
    tcp_keepintvl: int
    tcp_socket_buffer: int
    tcp_user_timeout: int
    track_extra_parameters: Tuple[str, ...]
    transaction_timeout: float
    unix_socket_dir: str
    unix_socket_group: str
    unix_socket_mode: int
    user: str
    verbose: int
    workers: int
