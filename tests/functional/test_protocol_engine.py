"""What the protocol engine guarantees, seen from clients and from PostgreSQL.

COPY in either direction gives its server back; a message no client may send is refused
before any server sees it; bytes pipelined across login phases are kept; KILL never writes
an error into a half-sent row; servers above file descriptor 1023 are reused; a list-valued
tracked parameter keeps its meaning on every server.
"""
from __future__ import annotations

import io
import resource
import socket
import struct
import time
import uuid
from typing import Any, Iterator, List, Tuple

import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import STANDARD_PASSWORDS
from bouncer.testing.ports import wait_until

USER = "md5user"


@pytest.fixture
def start(pg, bouncer_factory):
    def start_bouncer(**settings: Any):
        settings.setdefault("pool_mode", "transaction")
        settings.setdefault("default_pool_size", 1)
        return bouncer_factory(common_ini(pg, **settings))
    return start_bouncer


@pytest.fixture
def table(pg) -> Iterator[str]:
    name = "copy_" + uuid.uuid4().hex[:12]
    pg.psql(f"CREATE TABLE {name} (a int, b text); GRANT ALL ON {name} TO {USER}", db="testdb")
    yield name
    pg.psql(f"DROP TABLE {name}", db="testdb")


def server_states(bouncer) -> List[str]:
    rows = bouncer.admin("SHOW SERVERS")
    return [row[4] for row in rows if row[2] == "testdb"]


def gives_its_server_back(bouncer) -> bool:
    """The pool's only server is idle, and a second client gets it."""
    if not wait_until(lambda: server_states(bouncer) == ["idle"], 5, interval=0.1):
        return False
    other = bouncer.connect()
    try:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    finally:
        other.close()


def session(bouncer, **params: str) -> socket.socket:
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, USER, STANDARD_PASSWORDS[USER],
                                  params=params)
    return sock


# -- COPY ----------------------------------------------------------------------------------------

def test_copy_from_stdin_gives_the_server_back(start, table) -> None:
    bouncer = start()
    conn = bouncer.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.copy_expert(f"COPY {table} FROM STDIN", io.StringIO("1\ta\n2\tb\n"))
        assert gives_its_server_back(bouncer)  # while this client stays connected, idle
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")
            assert cursor.fetchone() == (2,)
    finally:
        conn.close()


def test_copy_to_stdout_gives_the_server_back(start, table, pg) -> None:
    pg.psql(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')", db="testdb")
    bouncer = start()
    conn = bouncer.connect()
    try:
        conn.autocommit = True
        out = io.StringIO()
        with conn.cursor() as cursor:
            cursor.copy_expert(f"COPY {table} TO STDOUT", out)
        assert out.getvalue() == "1\ta\n2\tb\n"
        assert gives_its_server_back(bouncer)
    finally:
        conn.close()


def test_copy_inside_a_transaction_gives_the_server_back_after_commit(start, table) -> None:
    bouncer = start()
    conn = bouncer.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (0, 'z')")
            cursor.copy_expert(f"COPY {table} FROM STDIN", io.StringIO("1\ta\n"))
        assert server_states(bouncer) == ["active"]  # the transaction is still open
        conn.commit()
        assert gives_its_server_back(bouncer)
    finally:
        conn.close()


def test_a_failed_copy_gives_the_server_back(start, table) -> None:
    bouncer = start()
    conn = bouncer.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cursor, pytest.raises(Exception, match="invalid input syntax"):
            cursor.copy_expert(f"COPY {table} FROM STDIN", io.StringIO("1\ta\nnot a number\tb\n"))
        assert gives_its_server_back(bouncer)
    finally:
        conn.close()


def cs(text: str) -> bytes:
    return text.encode() + b"\0"


def test_extended_protocol_copy_as_libpq_sends_it(start, table) -> None:
    """Parse/Bind/Describe/Execute/Sync, then the data, CopyDone and a second Sync: the first
    Sync is read during the copy and never answered."""
    bouncer = start()
    sock = session(bouncer)
    sock.sendall(pgwire.typed(b"P", cs("") + cs(f"COPY {table} FROM STDIN") + b"\0\0")
                 + pgwire.typed(b"B", cs("") + cs("") + struct.pack("!hhh", 0, 0, 0))
                 + pgwire.typed(b"D", b"P" + cs("")) + pgwire.typed(b"E", cs("") + b"\0\0\0\0")
                 + pgwire.typed(b"S"))
    assert [kind for kind, _ in pgwire.read_until(sock, b"G")] == [b"1", b"2", b"n", b"G"]
    sock.sendall(pgwire.typed(b"d", b"1\ta\n") + pgwire.typed(b"c") + pgwire.typed(b"S"))
    replies = pgwire.read_until(sock, b"Z")
    assert [kind for kind, _ in replies] == [b"C", b"Z"]
    assert gives_its_server_back(bouncer)
    assert pgwire.data_rows(pgwire.run_query(sock, f"SELECT count(*) FROM {table}")) == [["1"]]


# -- messages no client may send -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_message_no_client_may_send_never_reaches_postgres(start, pg, mode: str) -> None:
    bouncer = start(pool_mode=mode)
    sock = session(bouncer)
    assert pgwire.data_rows(pgwire.run_query(sock, "SELECT 1")) == [["1"]]
    sock.sendall(pgwire.typed(b"Y", b"junk") + pgwire.query("SELECT 2"))
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout=5))
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01", "unknown pkt")
    log = bouncer.log_text()
    assert "unknown pkt from client: 89/0x59" in log
    assert "closing because: unknown pkt" in log
    assert "invalid frontend message type" not in pg.log_tail(200)
    assert gives_its_server_back(bouncer)  # the server was never told anything wrong


def extended_select(sql: str) -> bytes:
    """Parse, Bind, Execute and Sync of an unnamed statement without parameters."""
    return (pgwire.typed(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))
            + pgwire.typed(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
            + pgwire.typed(b"E", b"\0" + struct.pack("!I", 0)) + pgwire.typed(b"S"))


def test_disable_pqexec_refuses_simple_queries_only(start) -> None:
    bouncer = start(disable_pqexec=1)
    sock = session(bouncer)
    sock.sendall(extended_select("SELECT 7"))
    assert pgwire.data_rows(pgwire.read_until(sock, b"Z")) == [["7"]]
    sock.sendall(pgwire.query("SELECT 1"))
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout=5))
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01", "PQexec disallowed")
    bouncer.wait_for_log(r'closing because: client used "Query" packet type')


def test_a_password_message_after_login_is_refused(start) -> None:
    bouncer = start()
    sock = session(bouncer)
    sock.sendall(pgwire.password("again"))
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout=5))
    assert (error["C"], error["M"]) == ("08P01", "unknown pkt")


# -- bytes pipelined across phases ---------------------------------------------------------------

def test_password_and_first_query_in_one_write(start) -> None:
    bouncer = start()
    sock = pgwire.connect(bouncer.host, bouncer.port)
    sock.sendall(pgwire.startup({"user": USER, "database": "testdb"}))
    kind, payload = pgwire.read_message(sock)
    assert kind == b"R" and pgwire.auth_code(payload) == 5
    answer = pgwire.md5_answer(USER, STANDARD_PASSWORDS[USER], payload[4:8])
    sock.sendall(pgwire.password(answer) + pgwire.query("SELECT 42"))
    assert pgwire.read_until(sock, b"Z")[0][0] == b"R"  # AuthenticationOk ... ReadyForQuery
    assert pgwire.data_rows(pgwire.read_until(sock, b"Z")) == [["42"]]


def test_startup_and_queries_in_one_write_to_a_trust_user(start) -> None:
    bouncer = start(auth_type="trust")
    sock = pgwire.connect(bouncer.host, bouncer.port)
    sock.sendall(pgwire.startup({"user": USER, "database": "testdb"})
                 + pgwire.query("SELECT 1") + pgwire.query("SELECT 2"))
    pgwire.read_until(sock, b"Z")  # the login
    assert pgwire.data_rows(pgwire.read_until(sock, b"Z")) == [["1"]]
    assert pgwire.data_rows(pgwire.read_until(sock, b"Z")) == [["2"]]


def test_a_query_pipelined_with_the_admin_login(start) -> None:
    bouncer = start(auth_type="trust", admin_users="md5user")
    sock = pgwire.connect(bouncer.host, bouncer.port)
    sock.sendall(pgwire.startup({"user": USER, "database": "pgbouncer"})
                 + pgwire.query("SHOW VERSION"))
    pgwire.read_until(sock, b"Z")
    rows = pgwire.data_rows(pgwire.read_until(sock, b"Z"))
    assert rows and rows[0][0].startswith("bouncer")


# -- errors from other greenlets -------------------------------------------------------------------

def split_messages(data: bytes) -> Tuple[List[bytes], bytes]:
    """Message types of the whole messages in ``data``, and the cut one it ends with."""
    kinds, pos = [], 0
    while len(data) - pos >= 5:
        length = struct.unpack_from("!I", data, pos + 1)[0]
        if pos + 1 + length > len(data):
            break
        kinds.append(data[pos:pos + 1])
        pos += 1 + length
    return kinds, data[pos:]


def test_kill_never_writes_into_a_half_sent_row(start) -> None:
    bouncer = start()
    # (Not a tiny SO_RCVBUF: with pkt_buf's 4 KiB sends, the kernel then drains what bouncer
    # queued before the kill at a few KB per delayed ACK, minutes for the megabytes queued.)
    sock = session(bouncer, application_name="slow-reader")
    sock.sendall(pgwire.query("SELECT repeat('x', 100000) FROM generate_series(1, 400)"))
    time.sleep(1)  # bouncer now waits for this client to read
    bouncer.admin(f"KILL_CLIENT {client_id_of(bouncer, 'slow-reader')}")
    received = bytearray()
    sock.settimeout(10)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    kinds, _ = split_messages(bytes(received))
    assert set(kinds) <= {b"T", b"D", b"E"}, "an error landed inside a row"
    assert kinds[0] == b"T" and kinds.count(b"D") < 400
    assert "client killed by admin" in bouncer.log_text()


def client_id_of(bouncer, application_name: str) -> int:
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SHOW CLIENTS")
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()
    return next(row["id"] for row in rows if row["application_name"] == application_name)


def test_kill_of_an_idle_client_tells_it_why(start) -> None:
    bouncer = start()
    sock = session(bouncer, application_name="idle-one")
    bouncer.admin(f"KILL_CLIENT {client_id_of(bouncer, 'idle-one')}")
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout=5))
    assert (error["S"], error["M"]) == ("FATAL", "client killed by admin")


# -- many file descriptors ------------------------------------------------------------------------

@pytest.fixture
def many_fds() -> Iterator[None]:
    """Let this process and the bouncer it starts hold 2,500 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2500 if hard == resource.RLIM_INFINITY else min(hard, 2500)
    if wanted < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low to pass fd 1023")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_servers_above_fd_1023_are_reused(start, many_fds) -> None:
    bouncer = start(max_client_conn=2000, client_login_timeout=120)
    idle = [socket.create_connection((bouncer.host, bouncer.port)) for _ in range(1100)]
    try:
        conn = bouncer.connect()  # its server's descriptor is above 1100
        try:
            conn.autocommit = True
            pids = set()
            with conn.cursor() as cursor:
                for _ in range(5):
                    cursor.execute("SELECT pg_backend_pid()")
                    pids.add(cursor.fetchone()[0])
            assert len(pids) == 1
        finally:
            conn.close()
    finally:
        for sock in idle:
            sock.close()
    assert "server conn crashed?" not in bouncer.log_text()


# -- tracked parameters -----------------------------------------------------------------------------

def test_a_list_valued_parameter_means_what_it_means_to_postgres(start, pg) -> None:
    schema = "other_" + uuid.uuid4().hex[:8]
    pg.psql(f"CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO {USER}", db="testdb")
    try:
        bouncer = start(track_extra_parameters="IntervalStyle, search_path")
        setting = {"search_path": f"public,{schema}"}
        direct, _ = pgwire.open_session("127.0.0.1", pg.port, USER, STANDARD_PASSWORDS[USER],
                                        params=setting)
        sql = "SELECT current_schemas(false)"
        expected = pgwire.data_rows(pgwire.run_query(direct, sql))
        assert expected == [[f"{{public,{schema}}}"]]  # two schemas, not one "public,..."
        sock = session(bouncer, **setting)
        assert pgwire.data_rows(pgwire.run_query(sock, sql)) == expected
    finally:
        pg.psql(f"DROP SCHEMA {schema}", db="testdb")
