"""Fast checks of scaling.py's tables, ratios and ini, on made-up runs: no pgbench, no pooler.

``python3 -m pytest bench/``, as test_helpers.py.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

from scaling import (Setup, has_peering, over_the_cores, report, reuseport_ini, scaling_table,
                     tps_curve, workers_cell)
from bench import WORKLOADS, Run

S100 = next(workload for workload in WORKLOADS if workload.name == "S100")


def run(tps: float, cpu_seconds: float = 1.0) -> Run:
    """A 10 s run at ``tps`` whose pooler used ``cpu_seconds``."""
    return Run(tps=tps, transactions=int(tps * 10), pooler_cpu_seconds=cpu_seconds)


SCALING = {
    1: {("S100", "bouncer"): [run(10_000, 2.0)], ("S100", "pgbouncer"): [run(20_000, 2.0)]},
    2: {("S100", "bouncer"): [run(15_000, 4.5), run(17_000, 5.1)],
        ("S100", "pgbouncer"): [run(30_000, 4.0)]},
    4: {("S100", "bouncer"): [run(18_000, 7.2)], ("S100", "pgbouncer"): [None]},
}


def setup(pgbouncer: Optional[str] = "PgBouncer 1.18.0") -> Setup:
    return Setup(environment="bouncer 0.1.0, 2 CPUs.", cores=2, pgbench_threads=2, rounds=1,
                 duration=10, pgbouncer=pgbouncer, peering=has_peering(pgbouncer))


def test_one_row_per_worker_count_with_ratios_cpu_and_scaling():
    lines = scaling_table(SCALING, "S100", ["bouncer", "pgbouncer"], cores=2).splitlines()
    assert lines[0] == ("| workers | bouncer TPS | pgbouncer TPS | bouncer/pgbouncer | "
                        "bouncer µs CPU/txn | pgbouncer µs CPU/txn | bouncer TPS vs 1 | "
                        "pgbouncer TPS vs 1 |")
    assert lines[2] == "| 1 | 10,000 | 20,000 | 0.50 | 20 | 10 | 1.00 | 1.00 |"
    # medians of two rounds: 16,000 TPS, 30 µs (4.5 s / 150,000 and 5.1 s / 170,000)
    assert lines[3] == "| 2 | 16,000 | 30,000 | 0.53 | 30 | 13 | 1.60 | 1.50 |"
    # a failed PgBouncer run: failed, and no ratio from it
    assert lines[4] == "| 4 (> 2 cores) | 18,000 | failed | n/a | 40 | n/a | 1.80 | n/a |"


def test_bouncer_only_table_has_no_pgbouncer_columns():
    header = scaling_table(SCALING, "S100", ["bouncer"], cores=8).splitlines()[0]
    assert "pgbouncer" not in header
    assert header.startswith("| workers | bouncer TPS | bouncer µs CPU/txn |")


def test_the_report_says_when_pgbouncer_is_missing_and_warns_past_the_cores():
    text = report(SCALING, setup(pgbouncer=None), [S100])
    assert "PgBouncer: not installed (apt-get install pgbouncer), so bouncer only." in text
    assert "This machine has 2 cores" in text
    assert "**Warning**: N = 4 exceeds the 2 cores" in text
    assert "### select-only, 100 clients" in text


def test_the_report_says_whether_pgbouncer_is_peered():
    assert "not peered" in report(SCALING, setup("PgBouncer 1.18.0"), [S100])
    assert "peered with `peer_id` and `[peers]`" in report(SCALING, setup("PgBouncer 1.23.1"),
                                                           [S100])


def test_peering_arrived_in_pgbouncer_1_19():
    assert not has_peering("PgBouncer 1.18.0")
    assert has_peering("PgBouncer 1.19.0")
    assert has_peering("PgBouncer 2.0.0")
    assert not has_peering(None)


def test_worker_counts_above_the_cores_are_flagged():
    assert over_the_cores([1, 2, 4, 8], 4) == [8]
    assert workers_cell(4, 4) == "4"
    assert workers_cell(8, 4) == "8 (> 4 cores)"


def test_the_curve_leaves_out_failed_points():
    assert tps_curve(SCALING, "S100", "pgbouncer") == ([1, 2], [20_000, 30_000])
    assert tps_curve(SCALING, "S100", "bouncer") == ([1, 2, 4], [10_000, 16_000, 18_000])


def test_a_peered_reuseport_ini_lists_every_process_socket_directory():
    pg = SimpleNamespace(port=5432)
    ini = reuseport_ini(pg, 7000, 2, ["/run/a", "/run/b"])  # type: ignore[arg-type]
    assert "so_reuseport = 1" in ini and "listen_port = 7000" in ini
    assert "peer_id = 2" in ini
    assert ini.endswith("[peers]\n1 = host=/run/a port=7000\n2 = host=/run/b port=7000\n")


def test_an_unpeered_reuseport_ini_has_no_peer_id():
    ini = reuseport_ini(SimpleNamespace(port=5432), 7000, 2, None)  # type: ignore[arg-type]
    assert "so_reuseport = 1" in ini
    assert "peer_id" not in ini and "[peers]" not in ini
