"""Benchmark: pgbench through bouncer, through the real PgBouncer, and straight to PostgreSQL.

Usage (from the repository root): ``python bench/bench.py [--rounds 3] [--duration 10]``.
Progress goes to stderr; the result table goes to stdout as Markdown.  See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

# A script run as `python bench/bench.py`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bouncer import __version__ as bouncer_version  # noqa: E402
from tests.support.bouncerproc import (BouncerProcess, find_pgbouncer,  # noqa: E402
                                       pgbouncer_user)
from tests.support.inifile import common_ini  # noqa: E402
from tests.support.pgcluster import (STANDARD_PASSWORDS, PgCluster,  # noqa: E402
                                     make_shared_tempdir)

BENCH_DB = "bench"
BENCH_USER = "md5user"  # md5 from the client to the pooler and from the pooler to PostgreSQL
MAX_PGBENCH_THREADS = 2  # the reference machine has 2 cores
TARGET_NAMES = ("bouncer", "pgbouncer", "direct")


@dataclass(frozen=True)
class Workload:
    label: str
    pgbench_args: Tuple[str, ...]


WORKLOADS = (
    Workload("select-only, 10 clients (`-S -c 10`)", ("-S", "-c", "10")),
    Workload("select-only, 100 clients, pool 20 (`-S -c 100`)", ("-S", "-c", "100")),
    Workload("simple update, 10 clients (`-N -c 10`)", ("-N", "-c", "10")),
    Workload("reconnect per transaction, md5 (`-C -S -c 10`)", ("-C", "-S", "-c", "10")),
)


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int


Results = Dict[Tuple[str, str], List[Optional[float]]]  # (workload, target) -> TPS per round


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pooler_ini(pg: PgCluster) -> str:
    """The same settings for bouncer and PgBouncer: transaction pooling, pool 20, md5."""
    return common_ini(pg, pool_mode="transaction", default_pool_size=20, max_client_conn=500,
                      auth_type="md5")


def prepare_database(pg: PgCluster, scale: int) -> None:
    progress(f"pgbench -i -s {scale} ...")
    pg.pgbench_init(BENCH_DB, scale)
    # -N updates accounts and inserts into history; the standard grants only allow reading.
    pg.psql(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {BENCH_USER}",
            db=BENCH_DB)


def start_targets(pg: PgCluster, root: str, wanted: Sequence[str],
                  cleanup: contextlib.ExitStack) -> List[Target]:
    targets = []
    if "bouncer" in wanted:
        bouncer = cleanup.enter_context(
            BouncerProcess(os.path.join(root, "bouncer"), pooler_ini(pg)))
        targets.append(Target("bouncer", bouncer.host, bouncer.port))
    pgbouncer_program = find_pgbouncer()
    if "pgbouncer" in wanted and pgbouncer_program is None:
        progress("pgbouncer is not installed (apt-get install pgbouncer): skipping it")
    elif "pgbouncer" in wanted:
        pgbouncer = cleanup.enter_context(
            BouncerProcess(os.path.join(root, "pgbouncer"), pooler_ini(pg),
                           program=[pgbouncer_program], run_as=pgbouncer_user()))
        targets.append(Target("pgbouncer", pgbouncer.host, pgbouncer.port))
    if "direct" in wanted:
        targets.append(Target("direct", "127.0.0.1", pg.port))
    return targets


def run_pgbench(pg: PgCluster, target: Target, workload: Workload,
                duration: int) -> Optional[float]:
    """TPS of one pgbench run, or None (with its output on stderr) if it failed."""
    command = [os.path.join(pg.bindir, "pgbench"), "-n", "-T", str(duration),
               "-j", str(MAX_PGBENCH_THREADS), "-h", target.host, "-p", str(target.port),
               "-U", BENCH_USER, *workload.pgbench_args, BENCH_DB]
    env = dict(os.environ, PGPASSWORD=STANDARD_PASSWORDS[BENCH_USER])
    result = subprocess.run(command, capture_output=True, text=True, env=env,
                            timeout=duration + 120)
    tps = re.search(r"^tps = ([0-9.]+)", result.stdout, re.M)
    if result.returncode != 0 or tps is None:
        progress(f"  pgbench failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        return None
    return float(tps.group(1))


def run_rounds(pg: PgCluster, targets: Sequence[Target], rounds: int, duration: int) -> Results:
    """Every round runs every workload against every target in turn, so drift hits all."""
    results: Results = {}
    for round_number in range(1, rounds + 1):
        for workload in WORKLOADS:
            for target in targets:
                progress(f"round {round_number}/{rounds}: {workload.label} -> {target.name}")
                tps = run_pgbench(pg, target, workload, duration)
                results.setdefault((workload.label, target.name), []).append(tps)
    return results


def median_tps(runs: Sequence[Optional[float]]) -> Optional[float]:
    """Median of the successful runs; None when any run failed (a partial median misleads)."""
    if not runs or any(tps is None for tps in runs):
        return None
    return statistics.median(runs)  # type: ignore[type-var]


def ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def markdown_table(results: Results, targets: Sequence[Target]) -> str:
    names = [target.name for target in targets]
    header = ["workload", *(f"{name} TPS" for name in names),
              "bouncer/pgbouncer", "bouncer/direct"]
    lines = ["| " + " | ".join(header) + " |",
             "|---" + "|---:" * (len(header) - 1) + "|"]
    for workload in WORKLOADS:
        medians = {name: median_tps(results.get((workload.label, name), [])) for name in names}
        cells = [f"{medians[name]:,.0f}" if medians[name] is not None else "failed"
                 for name in names]
        cells += [ratio(medians.get("bouncer"), medians.get("pgbouncer")),
                  ratio(medians.get("bouncer"), medians.get("direct"))]
        lines.append("| " + " | ".join([workload.label, *cells]) + " |")
    return "\n".join(lines)


def environment_line(pg: PgCluster) -> str:
    parts = [f"bouncer {bouncer_version}", f"PostgreSQL {pg.psql('SHOW server_version')}"]
    pgbouncer_program = find_pgbouncer()
    if pgbouncer_program:
        version = subprocess.run([pgbouncer_program, "--version"], capture_output=True,
                                 text=True).stdout.splitlines()
        parts.append(version[0] if version else "PgBouncer (version unknown)")
    parts += [f"Python {platform.python_version()}", f"{os.cpu_count()} CPUs",
              platform.platform(terse=True)]
    return ", ".join(parts) + "."


def report(pg: PgCluster, results: Results, targets: Sequence[Target],
           options: argparse.Namespace) -> str:
    return "\n".join([
        "## Benchmark results",
        "",
        f"pgbench over TCP to 127.0.0.1, scale {options.scale}, `-j {MAX_PGBENCH_THREADS}`, "
        f"user {BENCH_USER} (md5); median TPS over rounds: {options.rounds} x "
        f"{options.duration} s. Poolers: transaction pooling, default_pool_size 20.",
        environment_line(pg),
        "",
        markdown_table(results, targets),
        "",
    ])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per pgbench run (default 10)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES),
                        help="comma-separated subset of: " + ", ".join(TARGET_NAMES))
    options = parser.parse_args(argv)
    options.targets = [name.strip() for name in options.targets.split(",") if name.strip()]
    unknown = set(options.targets) - set(TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    root = make_shared_tempdir("bouncer-bench-")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        pg = PgCluster(os.path.join(root, "pg"))
        progress(f"starting PostgreSQL in {root} ...")
        pg.start()
        cleanup.callback(pg.stop)
        prepare_database(pg, options.scale)
        targets = start_targets(pg, root, options.targets, cleanup)
        results = run_rounds(pg, targets, options.rounds, options.duration)
        print(report(pg, results, targets, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
