"""What an operator and a client are told when logins fail: SHOW CHECKS on the admin console,
and refusals that keep PgBouncer's message and add what happened (DETAIL) and what to do (HINT).
"""
from __future__ import annotations

from typing import Any, Dict

from tests.support import pgwire
from bouncer.testing.process import BouncerProcess
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, PgCluster
from bouncer.testing.ports import free_port


def checks(bouncer: BouncerProcess) -> Dict[tuple, Dict[str, Any]]:
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SHOW CHECKS")
            names = [column.name for column in cursor.description]
            return {(row[0], row[1]): dict(zip(names, row)) for row in cursor.fetchall()}
    finally:
        conn.close()


def refusal(bouncer: BouncerProcess, database: str, user: str = "md5user") -> Dict[str, str]:
    """The ErrorResponse fields a client logging in to *database* gets."""
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": user, "database": database}))
        error = pgwire.first_error(pgwire.login(sock, user, STANDARD_PASSWORDS[user]))
    assert error is not None, f"{database}: the login succeeded"
    return error


def test_show_checks_says_why_server_logins_fail(pg: PgCluster, bouncer_factory: Any) -> None:
    down = free_port()
    bouncer = bouncer_factory(common_ini(pg, query_wait_timeout=2, databases={
        "wrongpw": f"host=127.0.0.1 port={pg.port} dbname=testdb user=md5user password=wrong",
        "down": f"host=127.0.0.1 port={down} dbname=testdb"}))
    bouncer.connect().close()  # testdb as md5user: a good login
    assert refusal(bouncer, "wrongpw")["M"] == 'password authentication failed for user "md5user"'
    again = refusal(bouncer, "wrongpw")  # within server_login_retry: refused at once
    assert (again["M"], again["C"]) == (
        'server login has been failing, cached error: password authentication failed for user '
        '"md5user" (server_login_retry)', "28P01")
    assert again["D"].startswith("bouncer's last login to the server failed; it tries again in ")
    assert again["H"].startswith("SHOW CHECKS on the admin console shows the failure")
    # A server that cannot be reached may come back: the first client waits while bouncer
    # retries (here until query_wait_timeout); the next ones are refused with the cause.
    assert refusal(bouncer, "down")["M"] == "query_wait_timeout"
    unreachable = refusal(bouncer, "down")
    assert unreachable["M"] == ("server login has been failing, cached error: could not connect "
                                "to server: Connection refused (server_login_retry)")

    rows = checks(bouncer)
    wrongpw = rows[("wrongpw", "md5user")]
    assert (wrongpw["status"], wrongpw["last_failure"], wrongpw["last_failure_sqlstate"]) == (
        "failing", 'password authentication failed for user "md5user"', "28P01")
    assert wrongpw["last_failure_time"] and wrongpw["last_success_time"] is None
    assert 10 <= int(wrongpw["refusing_for"]) <= 15
    assert rows[("down", "md5user")]["last_failure"] == (
        f"could not connect to server: Connection refused (bouncer tried 127.0.0.1:{down} "
        "(database down))")
    good = rows[("testdb", "md5user")]
    assert (good["status"], good["last_failure"], good["refusing_for"]) == ("ok", None, 0)
    assert good["last_success_time"]
    assert rows[("bench", None)]["status"] == "untried"  # no client asked for it yet


def test_refusals_keep_pgbouncers_words_and_say_what_to_do(pg: PgCluster,
                                                          bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(pg, max_client_conn=2))
    unknown = refusal(bouncer, "nosuchdb")
    assert (unknown["M"], unknown["D"]) == (
        "no such database: nosuchdb",
        "bouncer's [databases] section has no such entry and no * entry")
    assert "SHOW DATABASES" in unknown["H"]
    bouncer.admin("DISABLE bench")
    try:
        disabled = refusal(bouncer, "bench")
    finally:
        bouncer.admin("ENABLE bench")
    assert disabled["M"] == 'database "bench" is disabled' and "ENABLE bench" in disabled["H"]
    holding = [bouncer.connect(), bouncer.connect()]
    try:
        full = refusal(bouncer, "testdb")
    finally:
        for conn in holding:
            conn.close()
    assert (full["M"], full["D"]) == ("no more connections allowed (max_client_conn)",
                                      "bouncer already has max_client_conn = 2 clients")
    assert full["H"].startswith("raise max_client_conn ([pgbouncer], with the open files limit)")


def test_query_wait_timeout_says_what_the_client_waited_for(pg: PgCluster,
                                                            bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(pg, query_wait_timeout=1, default_pool_size=1))
    holder = bouncer.connect()  # session mode: it keeps testdb/md5user's only server
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT 1")
        # The login is served from the pool's cached parameters; the query waits for a server.
        sock, _ = pgwire.open_session(bouncer.host, bouncer.port, "md5user", "md5pass")
        with sock:
            sock.sendall(pgwire.query("SELECT 1"))
            busy = pgwire.first_error(pgwire.messages_until_closed(sock, 5))
    finally:
        holder.close()
    assert (busy["M"], busy["D"]) == (
        "query_wait_timeout", "no server connection of pool testdb/md5user became free within "
                              "query_wait_timeout (1 s): 1 in use, 0 being opened, pool_size 1")
    assert busy["H"].startswith("raise pool_size (or the limit named) or query_wait_timeout")
    bouncer.admin("PAUSE bench")
    try:
        paused = refusal(bouncer, "bench")
    finally:
        bouncer.admin("RESUME bench")
    assert (paused["M"], paused["D"]) == (
        "query_wait_timeout", "database bench is paused (PAUSE, KILL or SUSPEND on the admin "
                              "console, or a shutdown waiting for its servers)")
