"""Rendering PgBouncer-style ini files that point at a test cluster.

The output keeps ``@PORT@``/``@DIR@`` placeholders, which BouncerProcess fills in, so the same
text serves bouncer and the real pgbouncer.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

from bouncer.testing.process import USERLIST_NAME
from bouncer.testing.pgcluster import STANDARD_DATABASES, PgCluster

BASE_SETTINGS: Dict[str, str] = {
    "listen_addr": "127.0.0.1",
    "listen_port": "@PORT@",
    "unix_socket_dir": "@DIR@",
    "auth_type": "md5",
    "auth_file": f"@DIR@/{USERLIST_NAME}",
    "admin_users": "scramuser",
    "pool_mode": "session",
    "logfile": "@DIR@/bouncer.log",
    "pidfile": "@DIR@/bouncer.pid",
}


def common_ini(pg: PgCluster, databases: Optional[Mapping[str, str]] = None,
               users: Optional[Mapping[str, str]] = None, **settings: object) -> str:
    """A working ini: ``[databases]`` testdb and bench on ``pg`` over 127.0.0.1, md5 auth.

    ``settings`` override or add ``[pgbouncer]`` keys (None removes one); ``databases`` adds or
    replaces ``[databases]`` lines (None removes one); ``users`` fills ``[users]``.
    """
    database_lines: Dict[str, Optional[str]] = {
        name: f"host=127.0.0.1 port={pg.port} dbname={name}" for name in STANDARD_DATABASES}
    database_lines.update(databases or {})
    pgbouncer: Dict[str, object] = {**BASE_SETTINGS, **settings}
    return render_ini({"databases": database_lines, "pgbouncer": pgbouncer, "users": users or {}})


def render_ini(sections: Mapping[str, Mapping[str, object]]) -> str:
    """``[section]`` blocks of ``key = value`` lines; None values and empty sections vanish."""
    blocks = []
    for section, values in sections.items():
        lines = [f"{key} = {value}" for key, value in values.items() if value is not None]
        if lines:
            blocks.append("\n".join([f"[{section}]", *lines]) + "\n")
    return "\n".join(blocks)
