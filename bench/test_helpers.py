"""Fast checks of the benchmark's parsers and /proc readers: ``python3 -m pytest bench/``.

Not under tests/: the benchmark is not part of the product's suite.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from procstat import cpu_seconds, open_descriptors, process_tree, rss_kib
from syscalls import SyscallCount, parse_summary, top_calls

# strace 6.1's -c table, as written by `strace -c -f -o FILE ls /`, cut down: blank errors
# cells, a blank usecs/call cell in the total row.
STRACE_SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 28.11    0.000395          11        34        13 openat
 20.14    0.000283         141         2           getdents64
 14.66    0.000206           6        30           mmap
  0.00    0.000000           0         1           execve
------ ----------- ----------- --------- --------- ----------------
100.00    0.001405                    67        13 total
"""


def test_strace_summary_rows_keep_calls_and_errors_apart():
    assert parse_summary(STRACE_SUMMARY) == [
        SyscallCount("openat", 34, 13), SyscallCount("getdents64", 2, 0),
        SyscallCount("mmap", 30, 0), SyscallCount("execve", 1, 0),
        SyscallCount("total", 67, 13)]


def test_strace_output_without_a_table_gives_no_rows():
    assert parse_summary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n") \
        == []


def test_top_calls_orders_by_calls_and_keeps_the_total_last():
    rows = top_calls(parse_summary(STRACE_SUMMARY), 2)
    assert [row.name for row in rows] == ["openat", "mmap", "total"]


def test_cpu_seconds_counts_a_busy_child_of_the_process():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        before = cpu_seconds(os.getpid())
        deadline = time.monotonic() + 10
        while cpu_seconds(os.getpid()) - before < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in process_tree(os.getpid())
        assert cpu_seconds(os.getpid()) - before >= 0.25
    finally:
        child.kill()
        child.wait()


def test_rss_and_descriptors_of_this_process():
    before = open_descriptors(os.getpid())
    with open(os.devnull, "rb"):
        assert open_descriptors(os.getpid()) == before + 1
    assert rss_kib(os.getpid()) > 1000  # a Python interpreter holds more than a megabyte
