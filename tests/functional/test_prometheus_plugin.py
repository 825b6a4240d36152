"""plugins/bouncer-prometheus, installed with pip and found by its entry point, in a running
bouncer: scraped over HTTP and read with prometheus_client's own parser.

The metrics must say what the admin console says (they are built from the same rows), under
pgbouncer_exporter's names; the wait histogram and login failures are what only the pooler
sees; /healthz follows PAUSE, SUSPEND and unreachable servers; the section's settings are
typed, reloaded and shown as bouncer's own.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.pgroles import login_outcome
from tests.functional.test_workers import WORKERS, private_dir, session
from bouncer.testing.process import BouncerProcess, BouncerStartError
from bouncer.testing.ini import common_ini
from tests.support import pgwire
from tests.support.plugininstall import install_plugin
from bouncer.testing.ports import free_port, wait_until

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def prometheus_plugin(tmp_path_factory) -> str:
    return install_plugin("bouncer-prometheus", str(tmp_path_factory.mktemp("prometheus")))


def exported_names(site: str) -> List[str]:
    """What the installed plugin says it exports (asked in a process that has it on its path)."""
    code = "from bouncer_prometheus.plugin import exported_names; print(*exported_names())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=site), timeout=60, check=True)
    return result.stdout.split()


def section(port: int, **settings: Any) -> str:
    lines = [f"listen_port = {port}", *(f"{key} = {value}" for key, value in settings.items())]
    return "\n[plugin.prometheus]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def start(pg, bouncer_factory, prometheus_plugin, monkeypatch):
    """``start(ini_extra="", databases=None, **settings) -> (bouncer, metrics port)``."""
    monkeypatch.setenv("PYTHONPATH", prometheus_plugin)
    monkeypatch.delenv("BOUNCER_DISABLE_PLUGIN_AUTOLOAD", raising=False)

    def run(extra: str = "", databases=None, with_section: bool = True, port: int = 0,
            wait: bool = True, **settings: Any) -> Tuple[BouncerProcess, int]:
        port = port or free_port()
        text = common_ini(pg, databases=databases, **settings)
        text += (section(port) if with_section else "") + extra
        bouncer = bouncer_factory(text)
        if with_section and wait:
            assert wait_until(lambda: answers(port), 10), bouncer.log_tail()
        return bouncer, port
    return run


def get(port: int, path: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] in (200, 503)
    except OSError:
        return False


def scrape(port: int) -> Samples:
    """Every sample of /metrics, parsed by prometheus_client's parser."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set:
    return {name for name, _ in samples}


def run_queries(bouncer: BouncerProcess, count: int) -> None:
    conn = bouncer.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            for _ in range(count):
                cursor.execute("SELECT 1")
    finally:
        conn.close()


# -- /metrics ---------------------------------------------------------------------------------

def test_metrics_carry_pgbouncer_exporters_names_and_the_consoles_numbers(start) -> None:
    bouncer, port = start()
    run_queries(bouncer, 5)
    held = bouncer.connect()  # an active client of testdb/md5user while scraping
    held.cursor().execute("SELECT 1")  # a transaction: its server stays linked
    try:
        samples = scrape(port)
        stats = {row[0]: row for row in bouncer.admin("SHOW STATS_TOTALS")}
        pools = {(row[0], row[1]): row for row in bouncer.admin("SHOW POOLS")}
    finally:
        held.close()
    assert value(samples, "pgbouncer_up") == 1
    assert value(samples, "pgbouncer_pools_client_active_connections",
                 database="testdb", user="md5user") == pools[("testdb", "md5user")][2] == 1
    assert value(samples, "pgbouncer_pools_server_active_connections",
                 database="testdb", user="md5user") == 1
    queries = value(samples, "pgbouncer_stats_queries_pooled_total", database="testdb")
    assert queries == int(stats["testdb"][3]) >= 5
    assert value(samples, "pgbouncer_stats_queries_duration_seconds_total",
                 database="testdb") == pytest.approx(int(stats["testdb"][7]) / 1e6)
    assert value(samples, "pgbouncer_config_max_client_connections") == 100
    assert value(samples, "pgbouncer_databases_pool_size", name="testdb", host="127.0.0.1",
                 port=str(bouncer_pg_port(bouncer)), database="testdb", force_user="",
                 pool_mode="") == 20
    assert value(samples, "pgbouncer_client_connections", database="testdb", user="md5user",
                 application_name="", state="active") == 1


def bouncer_pg_port(bouncer: BouncerProcess) -> int:
    line = next(row for row in bouncer.admin("SHOW DATABASES") if row[0] == "testdb")
    return line[2]


def test_every_series_is_a_documented_export_and_every_export_appears(
        start, prometheus_plugin) -> None:
    bouncer, port = start(pool_mode="transaction")
    run_queries(bouncer, 1)
    assert login_outcome(bouncer.connect, password="wrong").startswith("refused")
    client = bouncer.connect()  # pgbouncer_client_connections has a sample per client
    try:
        seen = names(scrape(port))
    finally:
        client.close()
    exports = set(exported_names(prometheus_plugin))
    assert {name for name in seen if name.startswith(("pgbouncer_", "bouncer_"))} <= exports
    # Only a queued wait makes the histogram's series appear; everything else is always there.
    assert exports - seen <= {f"bouncer_pools_client_wait_seconds_{suffix}"
                              for suffix in ("bucket", "sum", "count", "created")}
    assert "process_resident_memory_bytes" in seen


def test_hook_client_waited_fills_the_wait_histogram_of_the_pool(start) -> None:
    bouncer, port = start(pool_mode="transaction", default_pool_size=1)
    holder = bouncer.connect()
    holder.autocommit = False
    with holder.cursor() as cursor:
        cursor.execute("SELECT 1")  # a transaction holds the pool's only server
    waited: List[float] = []

    def queue() -> None:
        started = time.monotonic()
        run_queries(bouncer, 1)
        waited.append(time.monotonic() - started)

    labels = {"database": "testdb", "user": "md5user"}
    # The holder queued too, while the pool's first server logged in: count from here.
    before = scrape(port)
    waiter = threading.Thread(target=queue)
    waiter.start()
    assert wait_until(lambda: value(scrape(port), "pgbouncer_pools_client_waiting_connections",
                                    **labels) == 1, 10)
    time.sleep(0.3)
    holder.commit()
    waiter.join(10)
    holder.close()
    after = scrape(port)

    def grew(series: str, **more: str) -> float:
        return value(after, series, **labels, **more) - value(before, series, **labels, **more)

    assert grew("bouncer_pools_client_wait_seconds_count") == 1
    assert 0.3 <= grew("bouncer_pools_client_wait_seconds_sum") <= waited[0]
    assert grew("bouncer_pools_client_wait_seconds_bucket", le="0.1") == 0
    assert grew("bouncer_pools_client_wait_seconds_bucket", le="+Inf") == 1


def test_login_failures_are_counted_by_reason(start) -> None:
    bouncer, port = start()
    for _ in range(2):
        assert "password authentication failed" in login_outcome(bouncer.connect,
                                                                 password="wrong")
    assert "password authentication failed" in login_outcome(bouncer.connect, user="nobody",
                                                             password="x")
    assert login_outcome(bouncer.connect) == "md5user"
    samples = scrape(port)
    failures = "bouncer_client_login_failures_total"
    assert value(samples, failures, reason="wrong_password") == 2
    assert value(samples, failures, reason="unknown_user") == 1
    assert value(samples, failures, reason="other") == 0


# -- /healthz ---------------------------------------------------------------------------------

def test_healthz_is_503_while_paused_and_200_after_resume(start) -> None:
    bouncer, port = start()
    assert get(port, "/healthz") == (200, "ok\n")
    bouncer.admin("PAUSE")
    status, text = get(port, "/healthz")
    assert status == 503 and "paused" in text
    bouncer.admin("RESUME")
    assert get(port, "/healthz") == (200, "ok\n")
    bouncer.admin("PAUSE testdb")
    assert get(port, "/healthz") == (503, "database testdb is paused\n")


def test_healthz_is_503_when_no_server_of_a_database_can_be_reached(start) -> None:
    dead = free_port()
    bouncer, port = start(databases={"deaddb": f"host=127.0.0.1 port={dead} dbname=deaddb"})
    assert get(port, "/healthz")[0] == 200, "an untried database is not held against it"
    assert login_outcome(bouncer.connect, dbname="deaddb").startswith("refused")
    status, text = get(port, "/healthz")
    assert status == 503 and "database deaddb: no server can be reached" in text
    assert get(port, "/nothing")[0] == 404


# -- the section ------------------------------------------------------------------------------

def test_without_its_section_the_plugin_listens_nowhere(start) -> None:
    bouncer, _ = start(with_section=False)
    assert login_outcome(bouncer.connect) == "md5user"
    rows = {row[0]: row[1:] for row in bouncer.admin("SHOW CONFIG")}
    assert rows["plugin.prometheus.listen_port"] == ("9127", "9127", "yes")
    assert "prometheus: listening" not in bouncer.log_text()


def test_hook_declare_settings_listen_port_moves_on_reload_and_shows(start) -> None:
    bouncer, port = start()
    rows = {row[0]: row[1:] for row in bouncer.admin("SHOW CONFIG")}
    assert rows["plugin.prometheus.listen_port"] == (str(port), "9127", "yes")
    assert rows["plugin.prometheus.listen_addr"] == ("127.0.0.1", "127.0.0.1", "yes")
    new_port = free_port()
    bouncer.write_ini(bouncer.ini_text.replace(f"listen_port = {port}\n",
                                               f"listen_port = {new_port}\n"))
    bouncer.reload()
    assert wait_until(lambda: answers(new_port), 10), bouncer.log_tail()
    assert not answers(port)
    assert dict((row[0], row[1]) for row in bouncer.admin("SHOW CONFIG"))[
        "plugin.prometheus.listen_port"] == str(new_port)


def test_a_busy_port_is_tried_again_until_it_is_free(start) -> None:
    """As during an online restart, when the old process keeps the port until it exits."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    try:
        bouncer, _ = start(port=port, wait=False)
        bouncer.wait_for_log(f"prometheus: cannot listen on 127.0.0.1 port {port}: .*trying "
                             "again every 5 s")
        assert login_outcome(bouncer.connect) == "md5user", "bouncer serves meanwhile"
    finally:
        squatter.close()
    assert wait_until(lambda: answers(port), 15), bouncer.log_tail()


def test_a_bucket_change_needs_a_restart_and_says_so(start) -> None:
    bouncer, port = start()
    bouncer.write_ini(bouncer.ini_text + "wait_buckets = 0.5, 1\n")
    bouncer.reload()
    bouncer.wait_for_log("plugin.prometheus.wait_buckets cannot be changed by a reload; "
                         "restart to apply it")
    assert answers(port)


def test_a_bad_value_in_the_section_refuses_the_start(start) -> None:
    with pytest.raises(BouncerStartError) as failed:
        start(extra="wait_buckets = 1, fast\n")
    assert "plugin.prometheus.wait_buckets: each bound must be a number" in failed.value.log


def test_an_unknown_key_in_the_section_refuses_the_start(start) -> None:
    with pytest.raises(BouncerStartError) as failed:
        start(extra="listen_prot = 1\n")
    assert "listen_prot: unknown parameter" in failed.value.log


def test_with_workers_the_metrics_are_the_whole_poolers(start) -> None:
    """Whichever worker holds the port, /metrics counts the clients of every worker (through
    the plugin context's SHOW, which asks the others as the console does)."""
    bouncer, port = start(workers=2)
    for index in WORKERS:
        bouncer.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
    clients = [session(private_dir(bouncer), index)[0] for index in WORKERS]
    try:
        samples = scrape(port)
    finally:
        for sock in clients:
            sock.close()
    assert value(samples, "pgbouncer_pools_client_active_connections",
                 database="testdb", user="md5user") == len(WORKERS)


def test_with_workers_login_failures_and_waits_add_up_over_the_workers(start) -> None:
    """The hook-fed series (login failures, the wait histogram) count every worker's clients,
    not only those of the worker that holds the port."""
    bouncer, port = start(workers=2, pool_mode="transaction")
    for index in WORKERS:
        bouncer.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
    directory = private_dir(bouncer)
    before = scrape(port)
    for index in WORKERS:  # on each worker: a wrong password, and a first query of the pool
        with pytest.raises(AssertionError, match="login failed"):
            pgwire.open_session(directory, index, "md5user", "not-the-password")
        sock = session(directory, index)[0]
        assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
        sock.close()
    after = scrape(port)
    failures = "bouncer_client_login_failures_total"
    assert (value(after, failures, reason="wrong_password")
            - value(before, failures, reason="wrong_password")) == len(WORKERS)
    # Each worker's client waited while its pool's first server logged in.
    assert value(after, "bouncer_pools_client_wait_seconds_count", database="testdb",
                 user="md5user") == len(WORKERS)
