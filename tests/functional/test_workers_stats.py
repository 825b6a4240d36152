"""With workers, the periodic stats line is the whole pooler's, written once, as one process
writes it (pgbadger and other log readers add the lines of a period up)."""
from __future__ import annotations

import re
import time

from bouncer.testing.ini import common_ini
from tests.functional.test_workers import private_dir, worker_pids
from tests.support import pgwire


def test_the_first_worker_writes_the_stats_line_of_every_workers_traffic(pg,
                                                                          bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, workers=2, stats_period=1))
    for index in (1, 2):
        bouncer.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
    since = len(bouncer.log_text())
    sock, _ = pgwire.open_session(private_dir(bouncer), 2, "md5user", "md5pass")
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # traffic on worker 2 only
        assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
    sock.close()
    lines = re.findall(r"\[(\d+)\] LOG stats: (\d+) xacts/s", bouncer.log_text()[since:])
    pids = worker_pids(bouncer)
    assert lines and {int(pid) for pid, _ in lines} == {pids[1]}, lines
    assert max(int(xacts) for _, xacts in lines) > 0, "worker 2's transactions are counted"
