"""What the kernel says about a pooler process: CPU time, resident memory, open descriptors.

Linux only (reads /proc).  CPU time covers the process and its descendants, so a pooler that
forks helpers, or runs under a wrapper, is measured whole.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# Fields of /proc/PID/stat counted from the one after the ")" that ends the command name
# (proc(5) numbers them from 1 at the pid: ppid is field 4, utime 14, ...).
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _stat_fields(pid: int) -> Optional[List[str]]:
    """The fields after the command name, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: it ends at the last ")".
    return text[text.rindex(")") + 2:].split()


def _parent_of_every_process() -> Dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[_PPID])
    return parents


def process_tree(pid: int) -> List[int]:
    """``pid`` and all its live descendants."""
    children: Dict[int, List[int]] = {}
    for child, parent in _parent_of_every_process().items():
        children.setdefault(parent, []).append(child)
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants so far, reaped children included.

    A live child's time is in its own utime/stime and moves to its parent's cutime/cstime
    only when reaped, so adding all four over the live tree counts every tick once.
    """
    ticks = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (_UTIME, _STIME, _CUTIME, _CSTIME))
    return ticks / CLOCK_TICKS_PER_SECOND


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS of /proc/PID/status) in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # "VmRSS:   12345 kB"
    raise RuntimeError(f"no VmRSS for process {pid} (a zombie?)")


def open_descriptors(pid: int) -> int:
    """How many file descriptors ``pid`` holds (needs root for another user's process)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
