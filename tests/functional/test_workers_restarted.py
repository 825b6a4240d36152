"""A worker restarted after it died serves as the others do: what the console changed at run
time (SET, SET POOL, DISABLE, ...) holds in it too, until a RELOAD undoes the SETs."""
from __future__ import annotations

import os
import signal

import pytest

from bouncer.testing.process import BouncerProcess
# pooler: a fixture (two workers, both serving)
from tests.functional.test_workers import (pooler, private_dir, show_config,  # noqa: F401
                                           worker_pids)
from tests.functional.test_workers_console import console
from tests.support import pgwire


def restart_worker(pooler: BouncerProcess, index: int) -> None:
    victim = worker_pids(pooler)[index]
    since = len(pooler.log_text())
    os.kill(victim, signal.SIGKILL)
    pooler.wait_for_log(rf"worker {index} \(pid \d+\) is serving", since=since)


def test_a_restarted_worker_replays_what_the_console_changed(pooler, pg) -> None:  # noqa: F811
    default_timeout = show_config(pooler, 2, "query_wait_timeout")
    console(pooler, 1, "SET query_wait_timeout = 91")
    console(pooler, 1, "SET POOL md5user.testdb = 'pool_size=7'")
    console(pooler, 1, "DISABLE bench")
    restart_worker(pooler, 2)
    assert show_config(pooler, 2, "query_wait_timeout") == "91"
    pooler.wait_for_log(r"replayed 3 runtime changes")
    with pytest.raises(AssertionError, match="login failed"):  # bench stays disabled there
        session_on(pooler, 2, "bench")
    console(pooler, 2, "RELOAD")  # the file's settings again; the database stays disabled
    restart_worker(pooler, 2)
    assert show_config(pooler, 2, "query_wait_timeout") == default_timeout
    with pytest.raises(AssertionError, match="login failed"):
        session_on(pooler, 2, "bench")
    console(pooler, 1, "ENABLE bench")
    restart_worker(pooler, 2)
    session_on(pooler, 2, "bench").close()


def session_on(pooler: BouncerProcess, index: int, database: str):
    sock, _ = pgwire.open_session(private_dir(pooler), index, "md5user", "md5pass",
                                  database=database)
    return sock


def test_a_signalled_pause_holds_in_a_restarted_worker(pooler) -> None:  # noqa: F811
    pooler.signal(signal.SIGUSR1)
    pooler.wait_for_log(r"PAUSE done")
    restart_worker(pooler, 1)
    rows = console(pooler, 1, "SHOW STATE")[1]
    assert {"key": "paused", "value": "yes"} in rows
    pooler.signal(signal.SIGUSR2)


def test_a_worker_that_cannot_start_is_tried_again_until_it_can(pooler, pg) -> None:  # noqa: F811
    """A worker restarted onto a file it cannot load dies before it reads what the supervisor
    sent it: the supervisor keeps retrying (with its back-off), and the worker serves again
    once the file is mended."""
    good = pooler.ini_text
    since = len(pooler.log_text())
    pooler.write_ini(good + "\n[pgbouncer\n")  # a section header never closed
    victim = worker_pids(pooler)[1]
    os.kill(victim, signal.SIGKILL)
    pooler.wait_for_log(r"worker 1 \(pid \d+\) exited with status 1, restarting it in", since=since)
    pooler.wait_for_log(r"worker 1 \(pid \d+\) exited with status 1, restarting it in 1 s",
                        since=since)  # tried again, the pause doubled
    pooler.write_ini(good)
    pooler.wait_for_log(r"worker 1 \(pid \d+\) is serving", since=since, timeout=15)
    assert pooler.alive
    session_on(pooler, 1, "testdb").close()
