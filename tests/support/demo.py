"""``make demo``: a throwaway PostgreSQL with bouncer in front of it, running until Ctrl-C.

Run as ``python -m tests.support.demo`` from the repository root.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from typing import Optional

from bouncer.testing.process import BouncerProcess, BouncerStartError
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, PgCluster, make_shared_tempdir


def instructions(pg: PgCluster, bouncer: BouncerProcess) -> str:
    target = f"-h {bouncer.host} -p {bouncer.port}"
    return "\n".join([
        f"bouncer listens on {bouncer.host}:{bouncer.port} (transaction pooling, md5 auth),",
        f"in front of PostgreSQL {pg.bindir.split(os.sep)[-2]} on port {pg.port}.",
        "",
        f"  connect:        PGPASSWORD={STANDARD_PASSWORDS['md5user']} psql {target} "
        f"-U md5user testdb",
        f"  admin console:  PGPASSWORD={STANDARD_PASSWORDS['scramuser']} psql {target} "
        f"-U scramuser pgbouncer",
        f"  bouncer output: tail -f {bouncer.output_path}",
        "",
        "Press Ctrl-C to stop and clean up.",
    ])


def run_until_interrupted(bouncer: BouncerProcess) -> int:
    """0 after Ctrl-C (or SIGTERM); 1 if bouncer dies on its own first."""
    try:
        while bouncer.alive:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    print(f"bouncer exited on its own:\n{bouncer.log_tail()}", file=sys.stderr)
    return 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # clean up the same way as for Ctrl-C
    root = make_shared_tempdir("bouncer-demo-")
    pg = PgCluster(os.path.join(root, "pg"))
    bouncer: Optional[BouncerProcess] = None
    try:
        print(f"starting a throwaway PostgreSQL in {root} ...", flush=True)
        pg.start()
        bouncer = BouncerProcess(os.path.join(root, "bouncer"),
                                 common_ini(pg, pool_mode="transaction"), STANDARD_PASSWORDS)
        print(instructions(pg, bouncer), flush=True)
        return run_until_interrupted(bouncer)
    except BouncerStartError as error:
        print(f"bouncer did not start: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if bouncer is not None:
            bouncer.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
