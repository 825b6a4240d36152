"""The scaling curve: bouncer with ``workers = N`` against PgBouncer run as N processes.

Usage (from the repository root): ``python bench/scaling.py [--workers 1,2,4,8]
[--workloads S100,C] [--rounds 3] [--duration 10] [--output scaling.md] [--plot scaling.png]``.
For each N, bouncer runs with ``workers = N`` and PgBouncer (when installed) as N processes
sharing one port with ``so_reuseport = 1``, each with its own pidfile and unix socket
directory, peered through ``peer_id`` and ``[peers]`` when PgBouncer has them (1.19+).
Progress goes to stderr; the Markdown tables go to stdout and to ``--output``, the curve (TPS
against N) to ``--plot`` as a PNG (needs matplotlib).  See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

# harness comes first: it makes the repository root (bouncer, tests.support) importable.
from harness import (PGBOUNCER_MISSING, POOL_SIZE, POOLER_NAMES, Target, environment_line,
                     markdown_table, pooler_ini, pooler_pid, pooler_target,
                     pgbouncer_version_line, progress, start_pgbouncer, start_postgres)
from bench import (BENCH_USER, MAX_PGBENCH_THREADS, WORKLOADS, Results, Workload,
                   chosen_workloads, comma_list, cpu_cell, median_cpu_us, median_tps,
                   prepare_database, ratio, run_rounds, tps_cell)
from bouncer.testing.ini import render_ini
from bouncer.testing.pgcluster import PgCluster
from bouncer.testing.ports import accepts_connections, free_port, wait_until
from bouncer.testing.process import BouncerProcess

BOUNCER, PGBOUNCER = POOLER_NAMES
DEFAULT_WORKERS = (1, 2, 4, 8)
DEFAULT_WORKLOADS = ("S100", "C")
PEERING_SINCE = (1, 19)  # PgBouncer's first release with peer_id and [peers]
START_TIMEOUT = 30.0
MATPLOTLIB_MISSING = ("matplotlib is not installed, so no plot: pip install -e '.[bench]' "
                      "(or pip install matplotlib; on Debian apt-get install python3-matplotlib)")

#: workers (bouncer's workers, PgBouncer's processes) -> bench.py's results for that count
Scaling = Dict[int, Results]


@dataclass(frozen=True)
class Setup:
    """What the report says about how the curve was measured."""
    environment: str
    cores: int
    pgbench_threads: int
    rounds: int
    duration: int
    pgbouncer: Optional[str]  # its version line; None when it is not installed
    peering: bool


# -- the machine ---------------------------------------------------------------------------

def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), as pgbench and the poolers."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_pgbench_threads(cores: int) -> int:
    """A quarter of the cores, at least bench.py's 2: pgbench must not be the bottleneck of
    eight pooler processes, nor take the cores that PostgreSQL needs."""
    return max(MAX_PGBENCH_THREADS, cores // 4)


def over_the_cores(workers: Sequence[int], cores: int) -> List[int]:
    return [count for count in workers if count > cores]


def has_peering(version_line: Optional[str]) -> bool:
    """Whether ``pgbouncer --version``'s first line names a release with peer_id (1.19+)."""
    found = re.search(r"(\d+)\.(\d+)", version_line or "")
    return found is not None and (int(found[1]), int(found[2])) >= PEERING_SINCE


# -- the poolers for one N -----------------------------------------------------------------

def reuseport_ini(pg: PgCluster, port: int, peer_id: int,
                  peer_dirs: Optional[Sequence[str]]) -> str:
    """The bench's ini for process ``peer_id`` of a so_reuseport group on ``port``; with
    ``peer_dirs`` (each process's unix socket directory, in peer id order) it is peered."""
    settings: Dict[str, object] = {"listen_port": port, "so_reuseport": 1}
    if not peer_dirs:
        return pooler_ini(pg, **settings)
    peers = {str(number): f"host={directory} port={port}"
             for number, directory in enumerate(peer_dirs, start=1)}
    return pooler_ini(pg, **settings, peer_id=peer_id) + "\n" + render_ini({"peers": peers})


def start_bouncer(pg: PgCluster, workers: int, root: str,
                  cleanup: contextlib.ExitStack) -> Target:
    """bouncer with ``workers = N``, once every worker serves; its CPU is the whole tree's."""
    process = cleanup.enter_context(BouncerProcess(os.path.join(root, f"bouncer-{workers}"),
                                                   pooler_ini(pg, workers=workers)))
    if workers > 1 and not wait_until(
            lambda: process.log_text().count(" is serving") >= workers, START_TIMEOUT,
            give_up=lambda: not process.alive):
        raise RuntimeError(f"bouncer with workers = {workers} did not start them all:\n"
                           f"{process.log_tail()}")
    return pooler_target(BOUNCER, process)


def start_pgbouncer_group(pg: PgCluster, count: int, peering: bool, root: str,
                          cleanup: contextlib.ExitStack) -> Target:
    """``count`` PgBouncer processes on one port; one target measuring all of them."""
    port = free_port()
    workdirs = [os.path.join(root, f"pgbouncer-{count}-{number}")
                for number in range(1, count + 1)]
    processes = []
    for number, workdir in enumerate(workdirs, start=1):
        ini = reuseport_ini(pg, port, number, workdirs if peering else None)
        processes.append(start_pgbouncer(workdir, ini, cleanup))
        # Its start() saw the port answer, which the first process does for all of them.
        wait_for_own_socket(processes[-1])
    pids = tuple(pooler_pid(process) for process in processes)
    return Target(PGBOUNCER, processes[0].host, port, pids)


def wait_for_own_socket(process: BouncerProcess) -> None:
    """Wait until the process answers on the unix socket in its own directory."""
    path = os.path.join(process.socket_dir or "", f".s.PGSQL.{process.port}")
    if not wait_until(lambda: accepts_connections(socket.AF_UNIX, path), START_TIMEOUT,
                      give_up=lambda: not process.alive):
        raise RuntimeError(f"{' '.join(process.command)} did not listen on {path}:\n"
                           f"{process.log_tail()}")


def measure_workers(pg: PgCluster, workers: int, setup: Setup,
                    workloads: Sequence[Workload], root: str) -> Results:
    """Both poolers with N processes, started for these runs and stopped after them."""
    progress(f"workers = {workers}: starting the poolers ...")
    with contextlib.ExitStack() as cleanup:
        targets = [start_bouncer(pg, workers, root, cleanup)]
        if setup.pgbouncer:
            targets.append(start_pgbouncer_group(pg, workers, setup.peering, root, cleanup))
        return run_rounds(pg, targets, workloads, setup.rounds, setup.duration,
                          setup.pgbench_threads)


# -- the report (pure functions of the results) --------------------------------------------

def workers_cell(workers: int, cores: int) -> str:
    return f"{workers} (> {cores} cores)" if workers > cores else str(workers)


def scaling_table(scaling: Scaling, workload: str, poolers: Sequence[str], cores: int) -> str:
    """One row per N: each pooler's TPS, the ratio, each one's µs CPU/txn and its TPS
    relative to the smallest N measured."""
    counts = sorted(scaling)
    first = counts[0]
    tps = {(count, pooler): median_tps(scaling[count].get((workload, pooler), []))
           for count in counts for pooler in poolers}
    ratio_columns = ["bouncer/pgbouncer"] if PGBOUNCER in poolers else []
    header = ["workers", *(f"{pooler} TPS" for pooler in poolers), *ratio_columns,
              *(f"{pooler} µs CPU/txn" for pooler in poolers),
              *(f"{pooler} TPS vs {first}" for pooler in poolers)]
    rows = [[workers_cell(count, cores),
             *(tps_cell(tps[count, pooler]) for pooler in poolers),
             *(ratio(tps[count, BOUNCER], tps[count, PGBOUNCER]) for _ in ratio_columns),
             *(cpu_cell(median_cpu_us(scaling[count].get((workload, pooler), [])))
               for pooler in poolers),
             *(ratio(tps[count, pooler], tps[first, pooler]) for pooler in poolers)]
            for count in counts]
    return markdown_table(header, rows)


def setup_lines(setup: Setup, workers: Sequence[int]) -> List[str]:
    """What was run, on how many cores, and the warnings that go with it."""
    lines = [
        f"pgbench over TCP to 127.0.0.1, `-j {setup.pgbench_threads}`, user {BENCH_USER} (md5); "
        f"medians of {setup.rounds} round(s) of {setup.duration} s. Both poolers: transaction "
        f"pooling, default_pool_size {POOL_SIZE} per process (each process keeps its own pools). "
        "bouncer: `workers = N`, CPU of the supervisor and its workers. "
        + pgbouncer_line(setup) + " µs CPU/txn: the pooler's user + system CPU time per "
        "transaction (per connection for `-C`), all its processes together.",
        setup.environment,
        f"This machine has {setup.cores} cores; pgbench and PostgreSQL run on them too.",
    ]
    over = over_the_cores(workers, setup.cores)
    if over:
        lines.append(f"**Warning**: N = {', '.join(map(str, over))} exceeds the {setup.cores} "
                     "cores, so those points measure contention, not scaling.")
    return lines


def pgbouncer_line(setup: Setup) -> str:
    if setup.pgbouncer is None:
        return "PgBouncer: not installed (apt-get install pgbouncer), so bouncer only."
    peering = ("peered with `peer_id` and `[peers]`" if setup.peering else
               "not peered: it has no `peer_id` before 1.19, so a cancel may reach the wrong "
               "process (pgbench sends none)")
    return (f"{setup.pgbouncer}: N processes on one port with `so_reuseport = 1`, each with "
            f"its own pidfile and unix socket directory, {peering}.")


def measured_poolers(setup: Setup) -> List[str]:
    return [BOUNCER, PGBOUNCER] if setup.pgbouncer else [BOUNCER]


def report(scaling: Scaling, setup: Setup, workloads: Sequence[Workload]) -> str:
    poolers = measured_poolers(setup)
    parts = ["## Scaling across cores", "", *setup_lines(setup, sorted(scaling)), ""]
    for workload in workloads:
        parts += [f"### {workload.label}", "",
                  scaling_table(scaling, workload.name, poolers, setup.cores), ""]
    return "\n".join(parts)


def tps_curve(scaling: Scaling, workload: str, pooler: str) -> Tuple[List[int], List[float]]:
    """The measured points (N, median TPS) of one pooler; failed ones left out."""
    points = [(count, median_tps(scaling[count].get((workload, pooler), [])))
              for count in sorted(scaling)]
    kept = [(count, tps) for count, tps in points if tps is not None]
    return [count for count, _ in kept], [tps for _, tps in kept]


# -- the plot ------------------------------------------------------------------------------

def plot_curves(scaling: Scaling, workloads: Sequence[Workload], poolers: Sequence[str],
                cores: int, path: str) -> bool:
    """TPS against N, one panel per workload, a line per pooler; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        progress(MATPLOTLIB_MISSING)
        return False
    figure, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5),
                                squeeze=False)
    for axis, workload in zip(axes[0], workloads):
        for pooler in poolers:
            axis.plot(*tps_curve(scaling, workload.name, pooler), marker="o", label=pooler)
        if cores < max(scaling):
            axis.axvline(cores, color="grey", linestyle=":", label=f"{cores} cores")
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(scaling), [str(count) for count in sorted(scaling)])
        axis.set_ylim(bottom=0)
        axis.set(title=workload.label.replace("`", ""), ylabel="TPS",
                 xlabel="bouncer workers / PgBouncer processes")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# -- the command ---------------------------------------------------------------------------

def worker_counts(text: str) -> List[int]:
    counts = sorted({int(item) for item in comma_list(text)})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("worker counts are whole numbers from 1 up")
    return counts


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    names = [workload.name for workload in WORKLOADS]
    cores = usable_cores()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=worker_counts, default=list(DEFAULT_WORKERS),
                        help="comma-separated process counts (default 1,2,4,8)")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help="comma-separated subset of bench.py's workloads: "
                        + ", ".join(names) + " (default S100,C)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point (default 3)")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per pgbench run (default 10)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--pgbench-threads", type=int, default=default_pgbench_threads(cores),
                        help="pgbench -j (default: a quarter of the cores, at least 2: "
                        f"{default_pgbench_threads(cores)} here)")
    parser.add_argument("--output", default="scaling.md", help="the Markdown file to write")
    parser.add_argument("--plot", default="scaling.png", help="the PNG file to write")
    options = parser.parse_args(argv)
    options.workloads = chosen_workloads(parser, options.workloads)
    return options


def describe(pg: PgCluster, options: argparse.Namespace) -> Setup:
    version = pgbouncer_version_line()
    if version is None:
        progress(PGBOUNCER_MISSING)
    setup = Setup(environment_line(pg), usable_cores(), options.pgbench_threads,
                  options.rounds, options.duration, version, has_peering(version))
    for count in over_the_cores(options.workers, setup.cores):
        progress(f"warning: N = {count} exceeds the {setup.cores} cores of this machine, which "
                 "pgbench and PostgreSQL share: that point measures contention, not scaling")
    return setup


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        pg = start_postgres("bouncer-scaling-", cleanup)
        prepare_database(pg, options.scale)
        setup = describe(pg, options)
        root = os.path.dirname(pg.basedir)
        scaling = {count: measure_workers(pg, count, setup, options.workloads, root)
                   for count in options.workers}
    text = report(scaling, setup, options.workloads)
    print(text, flush=True)
    with open(options.output, "w", encoding="utf-8") as output:
        output.write(text)
    progress(f"wrote {options.output}")
    if plot_curves(scaling, options.workloads, measured_poolers(setup), setup.cores,
                   options.plot):
        progress(f"wrote {options.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
