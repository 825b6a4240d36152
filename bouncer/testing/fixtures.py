"""bouncer's pytest fixtures: a throwaway PostgreSQL and real bouncer processes.

A plugin's own tests load them with ``pytest_plugins = ["bouncer.testing.fixtures"]`` in
their ``conftest.py``; bouncer's suite does the same.  They give:

* ``pg`` (session): a running :class:`~bouncer.testing.pgcluster.PgCluster` under a temp
  dir, with the standard roles (``md5user``, ``scramuser``, ``trustuser``), ``testdb`` and
  a pgbench ``bench`` database.  Shared by the session: a test that changes its settings or
  pg_hba.conf must undo it.
* ``bouncer_factory``: ``start(ini_text, userlist=None, **kwargs)`` starts a bouncer
  subprocess from that ini (see :func:`bouncer.testing.ini.common_ini`) and returns its
  :class:`~bouncer.testing.process.BouncerProcess` once it listens; every process is stopped
  at teardown, and a failed test's report shows each one's output tail.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Generator, Iterator, List, Mapping, Optional

import pytest

from bouncer.testing.pgcluster import PgCluster, make_shared_tempdir
from bouncer.testing.process import BouncerProcess

BENCH_SCALE = 1
STARTED = pytest.StashKey[List[BouncerProcess]]()

StartBouncer = Callable[..., BouncerProcess]


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A running cluster with the standard roles, ``testdb`` and a pgbench ``bench`` db."""
    # Not pytest's tmp dir: that one is 0700 root, and PostgreSQL runs as postgres under root.
    basedir = make_shared_tempdir("bouncer-pg-")
    cluster = PgCluster(os.path.join(basedir, "pg"))
    try:
        cluster.start()
        cluster.pgbench_init("bench", BENCH_SCALE)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture
def bouncer_factory(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[StartBouncer]:
    """Yields ``start(ini_text, userlist=None, **kwargs) -> BouncerProcess``.

    Each call gets its own work dir; kwargs go to BouncerProcess (extra_files, flags...).
    """
    started = request.node.stash.setdefault(STARTED, [])

    def start(ini_text: str, userlist: Optional[Mapping[str, str]] = None,
              **kwargs: Any) -> BouncerProcess:
        workdir = tmp_path / f"bouncer{len(started)}"
        proc = BouncerProcess(workdir, ini_text, userlist, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo) -> Generator[None, Any, None]:
    """Attach each bouncer's output tail to a failed test's report (shown with the failure)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    started: List[BouncerProcess] = item.stash.get(STARTED, [])
    for number, proc in enumerate(started):
        report.sections.append((f"bouncer {number} output tail ({proc.output_path})",
                                proc.log_tail(60)))
