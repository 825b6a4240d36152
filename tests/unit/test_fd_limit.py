"""The descriptor estimate logged at start (PgBouncer's formula)."""
from __future__ import annotations

from pathlib import Path

from bouncer.config import load_config
from bouncer.fd_limit import SPARE, expected_fd_use


def test_expected_fd_use_counts_clients_and_a_pool_per_database_and_user(tmp_path: Path) -> None:
    path = tmp_path / "bouncer.ini"
    path.write_text("[databases]\n"
                    "forced = host=127.0.0.1 user=app pool_size=7\n"
                    "shared = host=127.0.0.1\n"
                    "[pgbouncer]\nmax_client_conn = 300\ndefault_pool_size = 5\n",
                    encoding="utf-8")
    config = load_config(str(path))
    # forced: its one pool; shared: one pool of default size per known user
    assert expected_fd_use(config, user_count=4) == 300 + SPARE + 7 + 5 * 4
