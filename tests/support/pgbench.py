"""Running the real ``pgbench`` through a pooler and reading its summary."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Optional, Sequence

from bouncer.testing.process import BouncerProcess
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, find_pg_bindir


@dataclass(frozen=True)
class PgbenchResult:
    returncode: int
    output: str
    processed: Optional[int]
    failed: Optional[int]


def run_pgbench(proc: BouncerProcess, args: Sequence[str], user: str = "scramuser",
                dbname: str = "bench", timeout: float = 60) -> PgbenchResult:
    """``pgbench ARGS`` against ``proc`` over TCP; ``failed`` is None when pgbench does not
    print the line (older versions)."""
    env = dict(os.environ, PGHOST=proc.host, PGPORT=str(proc.port), PGUSER=user,
               PGDATABASE=dbname, PGPASSWORD=STANDARD_PASSWORDS.get(user, ""))
    command = [os.path.join(find_pg_bindir(), "pgbench"), "-n", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    output = done.stdout + done.stderr
    return PgbenchResult(done.returncode, output,
                         _count(r"number of transactions actually processed: (\d+)", output),
                         _count(r"number of failed transactions: (\d+)", output))


def _count(pattern: str, output: str) -> Optional[int]:
    found = re.search(pattern, output)
    return int(found.group(1)) if found else None
