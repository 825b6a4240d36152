"""What the benchmark scripts share: a throwaway PostgreSQL, the poolers under test, progress.

bouncer and the real PgBouncer get the same ini; each target knows the pid of the pooler
process itself, for /proc measurements.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

# A script run as `python bench/NAME.py`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bouncer import __version__ as bouncer_version  # noqa: E402
from bouncer.testing.process import (BouncerProcess, find_pgbouncer,  # noqa: E402
                                       pgbouncer_user)
from bouncer.testing.ini import BASE_SETTINGS, common_ini  # noqa: E402
from bouncer.testing.pgcluster import PgCluster, make_shared_tempdir  # noqa: E402
from bouncer.testing.ports import wait_until  # noqa: E402

from procstat import cpu_seconds, process_tree  # noqa: E402

POOLER_NAMES = ("bouncer", "pgbouncer")
#: bouncer with ``workers = 2`` (issue #13): a supervisor and two worker processes.
TWO_WORKERS = "bouncer2"
DIRECT = "direct"
POOL_SIZE = 20


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    #: The pooler's processes, each measured with its descendants: one for a pooler that is
    #: a single process tree, several for PgBouncer run as so_reuseport processes, none for
    #: PostgreSQL itself.
    pids: Tuple[int, ...] = ()

    @property
    def pid(self) -> Optional[int]:
        """The (first) pooler process; None for PostgreSQL itself."""
        return self.pids[0] if self.pids else None


def pooler_cpu_seconds(target: Target) -> Optional[float]:
    """CPU time so far of all the target's processes and their descendants; None for
    PostgreSQL itself."""
    return sum(cpu_seconds(pid) for pid in target.pids) if target.pids else None


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pooler_ini(pg: PgCluster, **settings: object) -> str:
    """The same settings for bouncer and PgBouncer: transaction pooling, pool 20, md5;
    ``settings`` override or add ``[pgbouncer]`` keys."""
    return common_ini(pg, **{"pool_mode": "transaction", "default_pool_size": POOL_SIZE,
                             "max_client_conn": 500, "auth_type": "md5", **settings})


def start_postgres(prefix: str, cleanup: contextlib.ExitStack) -> PgCluster:
    """A fresh cluster in a new temp dir; ``cleanup`` stops it and removes the dir."""
    root = make_shared_tempdir(prefix)
    cleanup.callback(shutil.rmtree, root, ignore_errors=True)
    pg = PgCluster(os.path.join(root, "pg"))
    progress(f"starting PostgreSQL in {root} ...")
    pg.start()
    cleanup.callback(pg.stop)
    return pg


def start_targets(pg: PgCluster, wanted: Sequence[str], ini_text: str,
                  cleanup: contextlib.ExitStack) -> List[Target]:
    """Targets in the order of POOLER_NAMES (bouncer2 after bouncer) then direct; a missing
    pgbouncer is skipped."""
    root = os.path.dirname(pg.basedir)
    targets = []
    if "bouncer" in wanted:
        bouncer = cleanup.enter_context(BouncerProcess(os.path.join(root, "bouncer"), ini_text))
        targets.append(pooler_target("bouncer", bouncer))
    if TWO_WORKERS in wanted:
        # Same ini but for workers; CPU time is the whole process tree's.
        two = cleanup.enter_context(BouncerProcess(os.path.join(root, TWO_WORKERS),
                                                   pooler_ini(pg, workers=2)))
        targets.append(pooler_target(TWO_WORKERS, two))
    if "pgbouncer" in wanted and find_pgbouncer() is None:
        progress(PGBOUNCER_MISSING)
    elif "pgbouncer" in wanted:
        pgbouncer = start_pgbouncer(os.path.join(root, "pgbouncer"), ini_text, cleanup)
        targets.append(pooler_target("pgbouncer", pgbouncer))
    if DIRECT in wanted:
        targets.append(Target(DIRECT, "127.0.0.1", pg.port))
    return targets


PGBOUNCER_MISSING = "pgbouncer is not installed (apt-get install pgbouncer): skipping it"


def start_pgbouncer(workdir: str, ini_text: str,
                    cleanup: contextlib.ExitStack) -> BouncerProcess:
    """The real PgBouncer (as the postgres user when we are root: it refuses root), stopped
    by ``cleanup``; the caller has checked that find_pgbouncer() finds it."""
    program = find_pgbouncer()
    assert program is not None
    return cleanup.enter_context(BouncerProcess(workdir, ini_text, program=[program],
                                                run_as=pgbouncer_user()))


def pgbouncer_version_line() -> Optional[str]:
    """The first line of ``pgbouncer --version`` (``PgBouncer 1.18.0``), or None when
    PgBouncer is not installed."""
    program = find_pgbouncer()
    if program is None:
        return None
    lines = subprocess.run([program, "--version"], capture_output=True,
                           text=True).stdout.splitlines()
    return lines[0] if lines else "PgBouncer (version unknown)"


def pooler_target(name: str, process: BouncerProcess) -> Target:
    return Target(name, process.host, process.port, (pooler_pid(process),))


def pooler_pid(process: BouncerProcess) -> int:
    """The pid of the pooler itself.

    That is the pid in its pidfile when the pidfile names the started process or one of its
    descendants (a wrapper such as ``runuser`` forks the real pooler); otherwise, with no
    pidfile or a stale one, the started process.
    """
    path = process.render(BASE_SETTINGS["pidfile"])
    # bouncer writes its pidfile just after it starts listening, which is what start() saw.
    wait_until(lambda: os.path.exists(path), 5)
    try:
        with open(path, encoding="ascii") as pidfile:
            pid = int(pidfile.read().split()[0])
    except (OSError, ValueError, IndexError):
        return process.pid
    return pid if pid in process_tree(process.pid) else process.pid


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table whose first column is left-aligned and the others (numbers) right."""
    lines = ["| " + " | ".join(header) + " |",
             "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def environment_line(pg: PgCluster) -> str:
    parts = [f"bouncer {bouncer_version}", f"PostgreSQL {pg.psql('SHOW server_version')}"]
    pgbouncer_version = pgbouncer_version_line()
    if pgbouncer_version:
        parts.append(pgbouncer_version)
    parts += [f"Python {platform.python_version()}", f"{os.cpu_count()} CPUs",
              platform.platform(terse=True)]
    return ", ".join(parts) + "."
