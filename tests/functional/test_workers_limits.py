"""``workers = 2``: pool limits hold across the workers together (bouncer.slots).

Clients pick their worker through the workers' private unix sockets, so each test knows how
its clients are spread; server connections are counted in ``pg_stat_activity`` by role, each
test logging in as throwaway roles.  Clients hold their server in session mode by having run
a query; a client beyond a limit is seen waiting on its query (or on its login, while its
worker has no server to take the parameters from).
"""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import pytest

from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, PgCluster
from bouncer.testing.ports import wait_until
from bouncer.testing.process import BouncerProcess
from tests.functional.pgroles import Roles, literal, roles  # roles: a fixture
from tests.functional.test_workers import private_dir, worker_pids
from tests.support import pgwire
from tests.support.observe import Background

PASSWORD = "wl-pw"
#: Long enough for a client beyond a limit to have been served had the limit leaked.
STILL_WAITING = 1.0



@pytest.fixture
def tenants(roles: Roles) -> List[str]:
    return [roles.create("wl_tenant", PASSWORD) for _ in range(2)]


@pytest.fixture
def start(pg: PgCluster, bouncer_factory: Callable[..., BouncerProcess],
          tenants: List[str]) -> Callable[..., BouncerProcess]:
    """``start(**settings)``: two workers, both tenants in the auth file."""
    def start_bouncer(**settings: Any) -> BouncerProcess:
        text = common_ini(pg, workers=2, **settings)
        bouncer = bouncer_factory(text, {**STANDARD_PASSWORDS, **{t: PASSWORD for t in tenants}})
        for index in (1, 2):
            bouncer.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
        return bouncer
    return start_bouncer


def servers(pg: PgCluster, users: Sequence[str]) -> int:
    """Backends of *users* as PostgreSQL counts them (a replication connection's too)."""
    names = ", ".join(literal(user) for user in users)
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
                       f"('client backend', 'walsender') AND usename IN ({names})"))


class Client:
    """A client of one worker that logs in and runs ``SELECT 1`` in the background, then
    keeps its session (and, in session mode, its server) until :meth:`leave`."""

    def __init__(self, bouncer: BouncerProcess, worker: int, user: str, db: str) -> None:
        self.sock: socket.socket
        self.served = Background(lambda: self._log_in_and_query(
            private_dir(bouncer), worker, user, db))

    def _log_in_and_query(self, directory: str, worker: int, user: str, db: str) -> None:
        self.sock, _ = pgwire.open_session(directory, worker, user, PASSWORD, database=db)
        self.sock.settimeout(30)
        messages = pgwire.run_query(self.sock, "SELECT 1")
        assert pgwire.first_error(messages) is None, messages

    def leave(self) -> None:
        self.served.result(30)
        self.sock.close()


def spread(bouncer: BouncerProcess, who: Sequence[Tuple[str, str]], count: int) -> List[Client]:
    """*count* clients, alternately on worker 1 and 2, cycling through (user, db) of *who*;
    each starts once the one before it was served or is seen waiting, so who waits is known."""
    clients: List[Client] = []
    for number in range(count):
        user, db = who[number % len(who)]
        clients.append(Client(bouncer, 1 + number % 2, user, db))
        wait_until(clients[-1].served.done, 0.5)
    return clients


def served(clients: Sequence[Client]) -> List[Client]:
    return [client for client in clients if client.served.done()]


def assert_limit_holds(pg: PgCluster, users: Sequence[str], clients: List[Client],
                       limit: int) -> None:
    """*limit* clients are served and hold a server each, the others wait; when one leaves,
    a waiting one is served, and the count never goes above *limit*."""
    assert wait_until(lambda: len(served(clients)) == limit, 10)
    time.sleep(STILL_WAITING)
    assert len(served(clients)) == limit
    assert servers(pg, users) == limit
    leaving = served(clients)[0]
    leaving.leave()
    clients.remove(leaving)
    assert wait_until(lambda: len(served(clients)) == limit, 10)
    assert servers(pg, users) <= limit
    for client in sorted(clients, key=lambda c: not c.served.done()):
        client.leave()  # the last ones are served as the others leave
    assert servers(pg, users) <= limit


#: Each cross-worker limit: the ini pieces and the (tenant, database) pairs clients cycle
#: through, so that each limit is the one reached (pool_size is larger where it is not tested).
LIMITS = {
    "pool_size": (dict(default_pool_size=3), [(0, "testdb")]),
    "max_db_connections": (dict(max_db_connections=3), [(0, "testdb"), (1, "testdb")]),
    "max_user_connections": (dict(max_user_connections=3), [(0, "testdb"), (0, "bench")]),
}


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_a_limit_holds_across_the_workers(start, pg, tenants, limit) -> None:
    settings, who = LIMITS[limit]
    bouncer = start(**settings)
    clients = spread(bouncer, [(tenants[t], db) for t, db in who], 6)
    assert wait_until(lambda: served(clients) == clients[:3], 10)  # on workers 1, 2 and 1
    assert_limit_holds(pg, tenants, clients, 3)


def test_transaction_mode_too(start, pg, tenants) -> None:
    bouncer = start(default_pool_size=3, pool_mode="transaction")
    clients = [Client(bouncer, 1 + n % 2, tenants[0], "testdb") for n in range(6)]
    for client in clients:
        client.served.result(30)  # each transaction ends: the servers are shared
    assert servers(pg, tenants) <= 3
    for client in clients:
        client.leave()


def idle_servers_on_both_workers(bouncer: BouncerProcess, user: str, count: int) -> None:
    """*count* servers of (user, testdb) on each worker, idle (transaction mode)."""
    for worker in (1, 2):
        clients = [pgwire.open_session(private_dir(bouncer), worker, user, PASSWORD)[0]
                   for _ in range(count)]
        for sock in clients:
            sock.sendall(pgwire.query("BEGIN; SELECT 1"))
        for sock in clients:
            pgwire.read_until(sock, b"Z")  # all in a transaction at once: one server each
        for sock in clients:
            pgwire.run_query(sock, "COMMIT")
            sock.close()


def test_set_pool_on_one_worker_shrinks_the_count_across_both(start, pg, tenants) -> None:
    # Without a SET passed on to every worker, the one that got it announces the new size
    # to the supervisor, which has both close servers down to their shares.
    user = tenants[0]
    bouncer = start(default_pool_size=4, pool_mode="transaction")
    idle_servers_on_both_workers(bouncer, user, 2)
    assert servers(pg, [user]) == 4
    bouncer.admin(f"SET POOL {user}.testdb = 'pool_size=2'", host=private_dir(bouncer), port=1)
    assert wait_until(lambda: servers(pg, [user]) == 2, 5), servers(pg, [user])
    time.sleep(STILL_WAITING)
    assert servers(pg, [user]) == 2


def refusal(bouncer: BouncerProcess, worker: int, user: str, db: str = "testdb") -> str:
    """The error a login on *worker* gets ("" when it is let in)."""
    with pgwire.connect(private_dir(bouncer), worker) as sock:
        sock.sendall(pgwire.startup({"user": user, "database": db}))
        error = pgwire.first_error(pgwire.login(sock, user, PASSWORD))
    return error["M"] if error else ""


def test_max_client_conn_counts_the_clients_of_both_workers(start, tenants) -> None:
    bouncer = start(max_client_conn=4)
    held = [pgwire.open_session(private_dir(bouncer), worker, tenants[0], PASSWORD)[0]
            for worker in (1, 1, 2, 2)]
    for worker in (1, 2):
        assert refusal(bouncer, worker, tenants[0]) == \
            "no more connections allowed (max_client_conn)"
    held.pop().close()
    assert wait_until(lambda: refusal(bouncer, 1, tenants[0]) == "", 5)
    for sock in held:
        sock.close()


def client_limit(pg: PgCluster, tenants: List[str], case: str) -> Dict[str, Any]:
    """The settings of each way to set a client limit of 3, for *case*."""
    testdb = f"host=127.0.0.1 port={pg.port} dbname=testdb"
    return {
        "max_db_client_connections": dict(max_db_client_connections=3),
        "database's max_db_client_connections": dict(
            databases={"testdb": f"{testdb} max_db_client_connections=3"}),
        "max_user_client_connections": dict(max_user_client_connections=3),
        "user's max_user_client_connections": dict(
            users={tenants[0]: "max_user_client_connections=3"}),
    }[case]


#: Per case, the (tenant, database) pairs logins cycle through, all in the limited scope.
CLIENT_LIMITS = {
    "max_db_client_connections": [(0, "testdb"), (1, "testdb")],
    "database's max_db_client_connections": [(0, "testdb"), (1, "testdb")],
    "max_user_client_connections": [(0, "testdb"), (0, "bench")],
    "user's max_user_client_connections": [(0, "testdb"), (0, "bench")],
}


@pytest.mark.parametrize("case", sorted(CLIENT_LIMITS))
def test_a_client_limit_counts_the_clients_of_both_workers(start, pg, tenants, case) -> None:
    bouncer = start(**client_limit(pg, tenants, case))
    who = [(tenants[t], db) for t, db in CLIENT_LIMITS[case]]
    held = [pgwire.open_session(private_dir(bouncer), worker, who[n % 2][0], PASSWORD,
                                database=who[n % 2][1])[0]
            for n, worker in enumerate((1, 2, 1))]
    setting = case.split()[-1]
    for worker in (1, 2):
        for user, db in who:
            assert refusal(bouncer, worker, user, db) == \
                f"no more connections allowed ({setting})"
    other = refusal(bouncer, 2, tenants[1], "bench")  # in neither scope: let in
    assert other == "", other
    held.pop().close()
    assert wait_until(lambda: refusal(bouncer, 2, *who[0]) == "", 5)
    for sock in held:
        sock.close()


def test_min_pool_size_is_kept_by_the_workers_together(start, pg, tenants) -> None:
    user = tenants[0]
    bouncer = start(min_pool_size=3, pool_mode="transaction")
    first = pgwire.open_session(private_dir(bouncer), 1, user, PASSWORD)[0]
    assert wait_until(lambda: servers(pg, [user]) == 3, 5), servers(pg, [user])
    # Worker 2's login needs a server of its own (for the parameters it tells the client);
    # past that one, it leaves the minimum to the servers worker 1 keeps.
    second = pgwire.open_session(private_dir(bouncer), 2, user, PASSWORD)[0]
    time.sleep(STILL_WAITING + 1.0)  # janitor ticks of both workers
    assert servers(pg, [user]) == 4
    # Worker 1's servers go with it: worker 2 is told to make up the minimum.
    os.kill(worker_pids(bouncer)[1], signal.SIGKILL)
    assert wait_until(lambda: servers(pg, [user]) == 3, 10), servers(pg, [user])
    time.sleep(STILL_WAITING)
    assert servers(pg, [user]) == 3
    first.close()
    second.close()


def test_a_forced_users_min_pool_size_is_opened_once_for_both_workers(start, pg, tenants
                                                                      ) -> None:
    # Both workers make the pool at start, before any client, and ask for its servers at once.
    user = tenants[0]
    start(databases={"forced": f"host=127.0.0.1 port={pg.port} dbname=testdb user={user} "
                               f"password={PASSWORD} min_pool_size=2"})
    assert wait_until(lambda: servers(pg, [user]) == 2, 5), servers(pg, [user])
    time.sleep(STILL_WAITING + 1.0)
    assert servers(pg, [user]) == 2


def test_a_killed_workers_slots_come_back(start, pg, tenants) -> None:
    user = tenants[0]
    bouncer = start(default_pool_size=2)
    holders = [Client(bouncer, 1, user, "testdb") for _ in range(2)]
    for client in holders:
        client.served.result(10)
    waiting = Client(bouncer, 2, user, "testdb")
    time.sleep(STILL_WAITING)
    assert not waiting.served.done()
    since = len(bouncer.log_text())
    os.kill(worker_pids(bouncer)[1], signal.SIGKILL)
    waiting.served.result(10)  # the slots of the dead worker went to the waiting one
    bouncer.wait_for_log(r"worker 1 gone: 2 server slot\(s\) returned", since=since)
    bouncer.wait_for_log(r"worker 1 \(pid \d+\) is serving", since=since)
    assert wait_until(lambda: servers(pg, [user]) <= 2, 5)
    waiting.leave()


def test_a_replication_connection_counts_across_the_workers(start, pg, tenants) -> None:
    user = tenants[0]
    pg.psql(f'ALTER ROLE "{user}" REPLICATION')
    bouncer = start(default_pool_size=1)
    replication, _ = pgwire.open_session(private_dir(bouncer), 1, user, PASSWORD,
                                         params={"replication": "database"})
    other = Client(bouncer, 2, user, "testdb")
    time.sleep(STILL_WAITING)
    assert not other.served.done() and servers(pg, [user]) == 1
    replication.close()  # its connection closes with it, and the slot goes to worker 2
    other.leave()


def test_a_client_waiting_for_another_workers_server_gets_query_wait_timeout(start, tenants
                                                                             ) -> None:
    bouncer = start(default_pool_size=1, query_wait_timeout=2)
    holder = Client(bouncer, 1, tenants[0], "testdb")
    holder.served.result(10)
    started = time.monotonic()
    with pgwire.connect(private_dir(bouncer), 2) as sock:
        sock.sendall(pgwire.startup({"user": tenants[0], "database": "testdb"}))
        error = pgwire.first_error(pgwire.login(sock, tenants[0], PASSWORD))
    assert error is not None and "query_wait_timeout" in error["M"], error
    assert 1.5 < time.monotonic() - started < 5
    holder.leave()


def test_a_pool_of_one_server_serves_the_clients_of_both_workers(start, pg) -> None:
    """pool_size below the number of workers: the server worker 1 keeps between its
    transactions goes to worker 2's waiting client, which would otherwise wait until it
    timed out (query_wait_timeout), and back again."""
    bouncer = start(pool_mode="transaction", default_pool_size=1, query_wait_timeout=10)
    directory = private_dir(bouncer)
    for _ in range(2):
        for index in (1, 2):
            sock, _ = pgwire.open_session(directory, index, "md5user", "md5pass")
            sock.settimeout(8)
            started = time.monotonic()
            assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
            assert time.monotonic() - started < 5, f"worker {index} waited for the server"
            sock.close()
    assert servers(pg, ["md5user"]) <= 1
