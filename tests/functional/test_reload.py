"""SIGHUP reloads: a good new config takes effect for new server connections and logins; a bad
one is refused with the reason in the log, and the old config keeps serving."""
from __future__ import annotations

import os
import time

import psycopg2
import pytest

from bouncer.testing.ini import common_ini
from tests.support.observe import Background, backend_pid, read_text, scalar
from bouncer.testing.ports import wait_until

NEWDB = "newdb"


def reload_and_wait(bouncer, expect: str = "got SIGHUP") -> str:
    """Send SIGHUP and wait for ``expect`` in the log; returns the log written since."""
    since = len(bouncer.log_text())
    bouncer.reload()
    bouncer.wait_for_log(expect, since=since)
    return bouncer.log_text()[since:]


def holding_a_server(bouncer):
    """A client inside a transaction, so its server stays linked to it."""
    conn = bouncer.connect()
    backend_pid(conn)
    return conn


def pid_of_new_client(bouncer) -> int:
    conn = bouncer.connect()
    try:
        conn.autocommit = True
        return backend_pid(conn)
    finally:
        conn.close()


@pytest.fixture
def ini(pg):
    """``ini(**settings)``: the transaction-mode config these tests start from and change."""
    def render(databases=None, **settings):
        return common_ini(pg, databases=databases,
                          **{"pool_mode": "transaction", "default_pool_size": 1,
                             "query_wait_timeout": 5, **settings})
    return render


def test_larger_pool_size_applies_to_new_clients(bouncer_factory, ini) -> None:
    bouncer = bouncer_factory(ini())
    holder = holding_a_server(bouncer)
    try:
        bouncer.write_ini(ini(default_pool_size=2))
        reload_and_wait(bouncer)
        started = time.monotonic()
        assert pid_of_new_client(bouncer) != backend_pid(holder)
        assert time.monotonic() - started < 2, "the new client waited for the old pool size"
    finally:
        holder.close()


def test_larger_pool_size_serves_clients_already_waiting(bouncer_factory, ini) -> None:
    bouncer = bouncer_factory(ini())
    holder = holding_a_server(bouncer)
    try:
        waiting = Background(lambda: pid_of_new_client(bouncer))
        time.sleep(0.5)
        assert not waiting.done()
        bouncer.write_ini(ini(default_pool_size=2))
        reload_and_wait(bouncer)
        assert waiting.result(timeout=2) != backend_pid(holder)
    finally:
        holder.close()


def test_new_database_entry_becomes_available(pg, bouncer_factory, ini) -> None:
    bouncer = bouncer_factory(ini())
    with pytest.raises(psycopg2.OperationalError, match=f"no such database: {NEWDB}"):
        bouncer.connect(dbname=NEWDB)
    bouncer.write_ini(ini(databases={NEWDB: f"host=127.0.0.1 port={pg.port} dbname=bench"}))
    reload_and_wait(bouncer)
    conn = bouncer.connect(dbname=NEWDB)
    try:
        assert scalar(conn, "SELECT current_database()") == "bench"
    finally:
        conn.close()


def test_changed_database_entry_applies_to_new_server_connections(pg, bouncer_factory,
                                                                   ini) -> None:
    bouncer = bouncer_factory(ini())
    assert pid_of_new_client(bouncer)  # leaves an idle server connected to testdb
    bouncer.write_ini(ini(databases={"testdb": f"host=127.0.0.1 port={pg.port} dbname=bench"}))
    reload_and_wait(bouncer)
    conn = bouncer.connect()
    try:
        assert scalar(conn, "SELECT current_database()") == "bench"
    finally:
        conn.close()


def test_removed_database_keeps_its_clients_but_takes_no_new_ones(bouncer_factory,
                                                                 ini) -> None:
    bouncer = bouncer_factory(ini())
    client = bouncer.connect(dbname="bench")
    client.autocommit = True
    try:
        assert scalar(client, "SELECT 1") == 1
        bouncer.write_ini(ini(databases={"bench": None}))
        reload_and_wait(bouncer)
        with pytest.raises(psycopg2.OperationalError):
            bouncer.connect(dbname="bench")
        assert scalar(client, "SELECT 2") == 2
    finally:
        client.close()


def test_removed_database_takes_logins_again_once_a_reload_brings_it_back(bouncer_factory,
                                                                         ini) -> None:
    # Its pools outlived the removal (a client held one); the database came back all the same.
    bouncer = bouncer_factory(ini())
    client = bouncer.connect(dbname="bench")
    try:
        bouncer.write_ini(ini(databases={"bench": None}))
        reload_and_wait(bouncer)
        with pytest.raises(psycopg2.OperationalError, match='database "bench" is disabled'):
            bouncer.connect(dbname="bench")
        bouncer.write_ini(ini())
        reload_and_wait(bouncer)
        again = bouncer.connect(dbname="bench")
        assert scalar(again, "SELECT current_database()") == "bench"
        again.close()
    finally:
        client.close()


def test_auth_file_is_reread(bouncer_factory, ini) -> None:
    bouncer = bouncer_factory(ini(), {"md5user": "md5pass"})
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        bouncer.connect(user="scramuser")
    bouncer.write_userlist({"md5user": "md5pass", "scramuser": "scrampass"})
    reload_and_wait(bouncer)
    conn = bouncer.connect(user="scramuser")
    try:
        assert scalar(conn, "SELECT current_user") == "scramuser"
    finally:
        conn.close()


@pytest.mark.parametrize("change, named", [
    ({"pool_mode": "sometimes"}, "pool_mode"),
    ({"default_pool_size": "many"}, "default_pool_size"),
    ({"max_client_conn": "10\nno equals sign here"}, "bouncer.ini:"),
], ids=["bad-enum", "bad-number", "syntax"])
def test_bad_config_is_refused_and_the_old_one_kept(bouncer_factory, ini, change: dict,
                                                     named: str) -> None:
    bouncer = bouncer_factory(ini())
    client = bouncer.connect()
    client.autocommit = True
    try:
        bouncer.write_ini(ini(**change))
        logged = reload_and_wait(bouncer, expect="reload failed")
        assert named in logged
        assert bouncer.alive
        assert scalar(client, "SELECT 1") == 1
        assert pid_of_new_client(bouncer) == backend_pid(client)  # pool_size 1 still rules
    finally:
        client.close()


def test_logfile_is_reopened_after_it_was_moved(bouncer_factory, ini) -> None:
    bouncer = bouncer_factory(ini())
    logfile = os.path.join(bouncer.workdir, "bouncer.log")
    os.rename(logfile, logfile + ".1")  # what logrotate does
    reload_and_wait(bouncer)
    bouncer.connect().close()
    assert wait_until(lambda: "login attempt" in read_text(logfile), 5)
