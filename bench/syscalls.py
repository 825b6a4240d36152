"""Counting a running process's system calls with ``strace -c -f -p PID``.

strace slows the traced process down many times over: the counts are what to read, never the
throughput of the traced run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, List, Tuple

ATTACH_TIMEOUT = 10.0


@dataclass(frozen=True)
class SyscallCount:
    name: str  # "total" for strace's summary row
    calls: int
    errors: int


def strace_available() -> bool:
    return shutil.which("strace") is not None


@contextlib.contextmanager
def counting_syscalls(pid: int) -> Iterator[List[SyscallCount]]:
    """Trace ``pid`` (and its threads and children) for the duration of the block.

    The list it yields is filled once the block ends, in strace's order (most time first),
    with the total row last.
    """
    counts: List[SyscallCount] = []
    with tempfile.TemporaryDirectory(prefix="bouncer-strace-") as tmp:
        summary_path = os.path.join(tmp, "summary")
        attach_log_path = os.path.join(tmp, "attach.log")
        with open(attach_log_path, "wb") as attach_log:
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", summary_path,
                                       "-p", str(pid)], stderr=attach_log)
        try:
            _wait_for_attach(tracer, attach_log_path)
            yield counts
        finally:
            tracer.send_signal(signal.SIGINT)  # detach: strace writes its summary then
            tracer.wait(30)
        with open(summary_path, encoding="utf-8", errors="replace") as summary:
            counts.extend(parse_summary(summary.read()))


def _wait_for_attach(tracer: subprocess.Popen, attach_log_path: str) -> None:
    """strace says "Process N attached" on stderr; before that, calls would go uncounted."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while time.monotonic() < deadline:
        with open(attach_log_path, encoding="utf-8", errors="replace") as attach_log:
            log = attach_log.read()
        if "attached" in log:
            return
        if tracer.poll() is not None:
            raise RuntimeError(f"strace exited {tracer.returncode}: {log.strip()}")
        time.sleep(0.05)
    raise RuntimeError(f"strace did not attach within {ATTACH_TIMEOUT:.0f} s")


def parse_summary(text: str) -> List[SyscallCount]:
    """The rows of strace's ``-c`` table, which is fixed-width: the dashed line under the
    header gives each column's span (calls/errors cells may be blank)."""
    lines = text.splitlines()
    separator = next((i for i, line in enumerate(lines) if line.startswith("------")), None)
    if separator is None:
        return []
    spans = _column_spans(lines[separator])
    header = [lines[separator - 1][start:end].strip() for start, end in spans]
    calls_column, errors_column = header.index("calls"), header.index("errors")
    rows = []
    for line in lines[separator + 1:]:
        if not line.strip() or line.startswith("------"):
            continue
        cells = [line[start:end].strip() for start, end in spans[:-1]]
        rows.append(SyscallCount(name=line[spans[-1][0]:].strip(),
                                 calls=int(cells[calls_column] or 0),
                                 errors=int(cells[errors_column] or 0)))
    return rows


def _column_spans(separator: str) -> List[Tuple[int, int]]:
    spans: List[Tuple[int, int]] = []
    start = None
    for position, char in enumerate(separator + " "):
        if char == "-" and start is None:
            start = position
        elif char != "-" and start is not None:
            spans.append((start, position))
            start = None
    return spans


def top_calls(counts: List[SyscallCount], limit: int) -> List[SyscallCount]:
    """The ``limit`` most frequent calls, then the total row."""
    by_calls = sorted((c for c in counts if c.name != "total"), key=lambda c: -c.calls)
    total = [c for c in counts if c.name == "total"]
    return by_calls[:limit] + total
