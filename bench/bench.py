"""Benchmark: pgbench through bouncer, through the real PgBouncer, and straight to PostgreSQL.

Usage (from the repository root): ``python bench/bench.py [--rounds 3] [--duration 10]
[--workloads S10,S100,ext,prep,N10,C] [--strace]``.  Progress goes to stderr; the result
tables go to stdout as Markdown.  See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

# harness comes first: it makes the repository root (bouncer, tests.support) importable.
from harness import (DIRECT, POOL_SIZE, POOLER_NAMES, TWO_WORKERS, Target, environment_line,
                     markdown_table, pooler_cpu_seconds, pooler_ini, progress, start_postgres,
                     start_targets)
from syscalls import SyscallCount, counting_syscalls, strace_available, top_calls
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, PgCluster

BENCH_DB = "bench"
BENCH_USER = "md5user"  # md5 from the client to the pooler and from the pooler to PostgreSQL
MAX_PGBENCH_THREADS = 2  # the reference machine has 2 cores
TARGET_NAMES = (*POOLER_NAMES, DIRECT, TWO_WORKERS)  # bouncer2 only when asked for
STRACE_WORKLOAD = "S10"
STRACE_TOP_CALLS = 10


@dataclass(frozen=True)
class Workload:
    name: str  # what --workloads takes
    label: str
    pgbench_args: Tuple[str, ...]


WORKLOADS = (
    Workload("S10", "select-only, 10 clients (`-S -c 10`)", ("-S", "-c", "10")),
    Workload("S100", f"select-only, 100 clients, pool {POOL_SIZE} (`-S -c 100`)",
             ("-S", "-c", "100")),
    Workload("ext", "select-only, extended protocol (`-S -M extended -c 10`)",
             ("-S", "-M", "extended", "-c", "10")),
    Workload("prep", "select-only, prepared statements (`-S -M prepared -c 10`)",
             ("-S", "-M", "prepared", "-c", "10")),
    Workload("N10", "simple update, 10 clients (`-N -c 10`)", ("-N", "-c", "10")),
    Workload("C", "reconnect per transaction, md5 (`-C -S -c 10`)", ("-C", "-S", "-c", "10")),
)


@dataclass(frozen=True)
class Run:
    """One pgbench run against one target."""
    tps: float
    transactions: int
    pooler_cpu_seconds: Optional[float]  # None for PostgreSQL directly

    @property
    def cpu_us_per_transaction(self) -> Optional[float]:
        if self.pooler_cpu_seconds is None or not self.transactions:
            return None
        return self.pooler_cpu_seconds / self.transactions * 1e6


Results = Dict[Tuple[str, str], List[Optional[Run]]]  # (workload, target) -> run per round


def prepare_database(pg: PgCluster, scale: int) -> None:
    progress(f"pgbench -i -s {scale} ...")
    pg.pgbench_init(BENCH_DB, scale)
    # -N updates accounts and inserts into history; the standard grants only allow reading.
    pg.psql(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {BENCH_USER}",
            db=BENCH_DB)


def run_pgbench(pg: PgCluster, target: Target, workload: Workload, duration: int,
                threads: int = MAX_PGBENCH_THREADS) -> Optional[Tuple[float, int]]:
    """TPS and transactions processed, or None (with pgbench's output on stderr) on failure."""
    command = [os.path.join(pg.bindir, "pgbench"), "-n", "-T", str(duration),
               "-j", str(threads), "-h", target.host, "-p", str(target.port),
               "-U", BENCH_USER, *workload.pgbench_args, BENCH_DB]
    env = dict(os.environ, PGPASSWORD=STANDARD_PASSWORDS[BENCH_USER])
    result = subprocess.run(command, capture_output=True, text=True, env=env,
                            timeout=duration + 120)
    tps = re.search(r"^tps = ([0-9.]+)", result.stdout, re.M)
    processed = re.search(r"^number of transactions actually processed: (\d+)",
                          result.stdout, re.M)
    if result.returncode != 0 or tps is None or processed is None:
        progress(f"  pgbench failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        return None
    return float(tps.group(1)), int(processed.group(1))


def measured_run(pg: PgCluster, target: Target, workload: Workload, duration: int,
                 threads: int = MAX_PGBENCH_THREADS) -> Optional[Run]:
    """A pgbench run with the pooler's CPU time (utime + stime of all its processes) read
    around it."""
    cpu_before = pooler_cpu_seconds(target)
    outcome = run_pgbench(pg, target, workload, duration, threads)
    if outcome is None:
        return None
    cpu_after = pooler_cpu_seconds(target)
    cpu_used = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Run(tps=outcome[0], transactions=outcome[1], pooler_cpu_seconds=cpu_used)


def run_rounds(pg: PgCluster, targets: Sequence[Target], workloads: Sequence[Workload],
               rounds: int, duration: int, threads: int = MAX_PGBENCH_THREADS) -> Results:
    """Every round runs every workload against every target in turn, so drift hits all."""
    results: Results = {}
    for round_number in range(1, rounds + 1):
        for workload in workloads:
            for target in targets:
                progress(f"round {round_number}/{rounds}: {workload.label} -> {target.name}")
                run = measured_run(pg, target, workload, duration, threads)
                results.setdefault((workload.name, target.name), []).append(run)
    return results


def median_of(values: Sequence[Optional[float]]) -> Optional[float]:
    """Median of the values; None when any is missing (a partial median misleads)."""
    if not values or any(value is None for value in values):
        return None
    return statistics.median(values)  # type: ignore[type-var]


def median_tps(runs: Sequence[Optional[Run]]) -> Optional[float]:
    return median_of([None if run is None else run.tps for run in runs])


def median_cpu_us(runs: Sequence[Optional[Run]]) -> Optional[float]:
    """Median pooler CPU per transaction in µs; None if a run failed or had no pooler."""
    return median_of([None if run is None else run.cpu_us_per_transaction for run in runs])


def ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def tps_cell(tps: Optional[float]) -> str:
    return "failed" if tps is None else f"{tps:,.0f}"


def cpu_cell(cpu_us: Optional[float]) -> str:
    return "n/a" if cpu_us is None else f"{cpu_us:.0f}"


def results_table(results: Results, targets: Sequence[Target],
                  workloads: Sequence[Workload]) -> str:
    names = [target.name for target in targets]
    poolers = [target.name for target in targets if target.pid]
    scaling = [f"{TWO_WORKERS}/bouncer"] if TWO_WORKERS in names else []
    header = ["workload", *(f"{name} TPS" for name in names),
              "bouncer/pgbouncer", "bouncer/direct", *scaling,
              *(f"{name} µs CPU/txn" for name in poolers)]
    rows = []
    for workload in workloads:
        runs = {name: results.get((workload.name, name), []) for name in names}
        tps = {name: median_tps(runs[name]) for name in names}
        rows.append([workload.label, *(tps_cell(tps[name]) for name in names),
                     ratio(tps.get("bouncer"), tps.get("pgbouncer")),
                     ratio(tps.get("bouncer"), tps.get(DIRECT)),
                     *(ratio(tps.get(TWO_WORKERS), tps.get("bouncer")) for _ in scaling),
                     *(cpu_cell(median_cpu_us(runs[name])) for name in poolers)])
    return markdown_table(header, rows)


def count_syscalls(pg: PgCluster, targets: Sequence[Target], duration: int
                   ) -> Dict[str, Tuple[Run, List[SyscallCount]]]:
    """One traced `-S -c 10` run per pooler: its run and strace's counts."""
    workload = next(w for w in WORKLOADS if w.name == STRACE_WORKLOAD)
    traced = {}
    for target in targets:
        if not target.pid:
            continue
        progress(f"strace: {workload.label} -> {target.name}")
        try:
            with counting_syscalls(target.pid) as counts:
                run = measured_run(pg, target, workload, duration)
        except RuntimeError as err:  # strace could not attach (ptrace not allowed here?)
            progress(f"  skipping {target.name}: {err}")
            continue
        if run is not None:
            traced[target.name] = (run, counts)
    return traced


def syscall_table(traced: Dict[str, Tuple[Run, List[SyscallCount]]]) -> str:
    """Calls per transaction of each pooler's most frequent calls (failed calls in brackets)."""
    names: List[str] = []
    for _run, counts in traced.values():
        names += [c.name for c in top_calls(counts, STRACE_TOP_CALLS) if c.name not in names]
    names.sort(key=lambda name: name == "total")  # stable: the total row goes last

    def cell(pooler: str, syscall: str) -> str:
        run, counts = traced[pooler]
        found = next((c for c in counts if c.name == syscall), None)
        if found is None:
            return "0"
        errors = f" ({found.errors / run.transactions:.2f})" if found.errors else ""
        return f"{found.calls / run.transactions:.2f}{errors}"

    header = ["system call", *(f"{pooler} calls/txn (errors)" for pooler in traced)]
    return markdown_table(header, [[name, *(cell(p, name) for p in traced)] for name in names])


def report(pg: PgCluster, results: Results, targets: Sequence[Target],
           options: argparse.Namespace) -> str:
    return "\n".join([
        "## Benchmark results",
        "",
        f"pgbench over TCP to 127.0.0.1, scale {options.scale}, `-j {MAX_PGBENCH_THREADS}`, "
        f"user {BENCH_USER} (md5); medians over rounds: {options.rounds} x "
        f"{options.duration} s. Poolers: transaction pooling, default_pool_size {POOL_SIZE}. "
        "µs CPU/txn: the pooler's user + system CPU time per transaction "
        "(per connection for `-C`).",
        environment_line(pg),
        "",
        results_table(results, targets, options.workloads),
        "",
    ])


def strace_report(traced: Dict[str, Tuple[Run, List[SyscallCount]]],
                  options: argparse.Namespace) -> str:
    transactions = ", ".join(f"{name} {run.transactions:,}" for name, (run, _) in traced.items())
    return "\n".join([
        "## System calls per transaction",
        "",
        f"`strace -c -f` on each pooler during one `-S -c 10` run of {options.duration} s "
        f"(transactions: {transactions}; strace slows the pooler, so compare counts only).",
        "",
        syscall_table(traced),
        "",
    ])


def comma_list(text: str) -> List[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    workload_names = [workload.name for workload in WORKLOADS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per pgbench run (default 10)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--targets", default=",".join((*POOLER_NAMES, DIRECT)),
                        help="comma-separated subset of: " + ", ".join(TARGET_NAMES))
    parser.add_argument("--workloads", default=",".join(workload_names),
                        help="comma-separated subset of: " + ", ".join(workload_names))
    parser.add_argument("--strace", action="store_true",
                        help="then count each pooler's system calls during one -S -c 10 run")
    options = parser.parse_args(argv)
    options.targets = comma_list(options.targets)
    unknown = set(options.targets) - set(TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    options.workloads = chosen_workloads(parser, options.workloads)
    return options


def chosen_workloads(parser: argparse.ArgumentParser, text: str) -> List[Workload]:
    """The workloads a comma-separated ``--workloads`` names, in WORKLOADS' order; an unknown
    name is a usage error."""
    wanted = comma_list(text)
    unknown = set(wanted) - {workload.name for workload in WORKLOADS}
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return [workload for workload in WORKLOADS if workload.name in wanted]


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        pg = start_postgres("bouncer-bench-", cleanup)
        prepare_database(pg, options.scale)
        targets = start_targets(pg, options.targets, pooler_ini(pg), cleanup)
        results = run_rounds(pg, targets, options.workloads, options.rounds, options.duration)
        print(report(pg, results, targets, options), flush=True)
        if options.strace and not strace_available():
            progress("--strace: strace is not installed (apt-get install strace): skipping it")
        elif options.strace:
            traced = count_syscalls(pg, targets, options.duration)
            if traced:
                print(strace_report(traced, options))
            else:
                progress("--strace: no pooler target was traced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
