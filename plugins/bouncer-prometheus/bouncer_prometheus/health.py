"""``/healthz``: whether this pooler can serve clients now, and if not, why.

Unhealthy while the process is paused (PAUSE), suspended (SUSPEND, online restart) or shutting
down, while a database is paused, and when no server of a database can be reached: every pool
of that database that has tried to connect failed at its latest attempt (SHOW CHECKS' status).
A database no client has used yet is not held against the pooler.  Everything is read through
the plugin context: SHOW STATE, DATABASES and CHECKS.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.plugin.context import PluginContext


def health_problems(context: "PluginContext") -> List[str]:
    """One sentence per reason the pooler is unhealthy; empty when it is healthy."""
    problems: List[str] = []
    state = context.state
    if state.shutting_down is not None:
        problems.append(f"shutting down ({state.shutting_down.replace('_', ' ')})")
    if state.suspended:
        problems.append("suspended (SUSPEND on the admin console, or an online restart)")
    elif state.paused:
        problems.append("paused (PAUSE on the admin console)")
    else:
        problems += [f"database {row['name']} is paused" for row in context.show("DATABASES")
                     if row["paused"]]
    statuses: Dict[str, List[str]] = defaultdict(list)
    for row in context.show("CHECKS"):
        if row["status"] != "untried":
            statuses[row["database"]].append(row["status"])
    problems += [f"database {name}: no server can be reached (its latest server logins "
                 "failed; SHOW CHECKS says why)"
                 for name, found in sorted(statuses.items())
                 if all(status == "failing" for status in found)]
    return problems
