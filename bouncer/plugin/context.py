"""The narrow, stable view of the running pooler that every hook is given as ``context``.

The ``app`` hooks also get is the whole App, whose insides change as bouncer does; a plugin
should take ``context`` instead.  What it offers is what an operator already relies on: the
configuration, the process state, the HBA line that applies to a client and the rows of the
admin console's SHOW commands, whose columns are PgBouncer's and only ever grow at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from bouncer.admin import show as tables
from bouncer.admin.checks import CHECKS_COLUMNS, checks_table
from bouncer.admin.commands import Asker
from bouncer.admin.console import execute_for
from bouncer.admin.worker_channel import ForwardedConsole
from bouncer.admin.sockets import SOCKET_COLUMNS, client_table
from bouncer.auth.hba import HbaRule, load_hba
from bouncer.builtin.auth_hba import rule_for
from bouncer.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.plugin.client import ClientInfo

#: The console user plugins' SHOW requests run as in the other workers (for their logs).
PLUGIN_ASKER = "(plugin)"

_Table = Tuple[Sequence[Tuple[str, int]], Callable[["App"], Sequence[Sequence[Any]]]]

#: The SHOW commands a plugin may read, by name: their columns and the function that builds
#: the console's answer (the same rows, so a plugin and the console never disagree).
SHOW_TABLES: Mapping[str, _Table] = {
    "CHECKS": (CHECKS_COLUMNS, checks_table),
    "CLIENTS": (SOCKET_COLUMNS, client_table),
    "CONFIG": (tables.CONFIG_COLUMNS, tables.config_table),
    "DATABASES": (tables.DATABASE_COLUMNS, tables.database_table),
    "LISTS": (tables.LISTS_COLUMNS, tables.lists_table),
    "POOLS": (tables.POOL_COLUMNS, tables.pool_table),
    "STATS_TOTALS": (tables.STATS_TOTALS_COLUMNS, tables.stats_totals_table),
}


def hba_lines(config: "Config") -> Tuple[HbaRule, ...]:
    """The lines of *config*'s ``auth_hba_file``, for a plugin that validates the options of
    its method's lines; none when the file cannot be read (the HBA plugin reports that)."""
    try:
        return load_hba(config.auth_hba_file).rules
    except ConfigError:
        return ()


@dataclass(frozen=True)
class ProcessState:
    """SHOW STATE of this process, and whether a shutdown is under way (with ``workers``
    above 1, this worker's: the console's SHOW STATE is the pooler's).

    :param paused: PAUSE of every database is in force.
    :param suspended: SUSPEND (or an online restart handing over) is in force.
    :param shutting_down: the shutdown mode (``immediate``, ``wait_for_servers``,
        ``wait_for_clients``), or ``None``.
    """

    paused: bool
    suspended: bool
    shutting_down: Optional[str]


class PluginContext:
    """What a plugin may read of the running pooler; nothing here changes it."""

    def __init__(self, app: "App") -> None:
        self._app = app

    @property
    def config(self) -> "Config":
        """The configuration in force (after a RELOAD, the new one)."""
        return self._app.config

    def settings(self, section: str) -> Mapping[str, Any]:
        """The typed values of ``[plugin.SECTION]`` in force (see ``bouncer_declare_settings``)."""
        return self._app.config.plugin(section)

    @property
    def state(self) -> ProcessState:
        flags = dict(tables.process_state(self._app))
        return ProcessState(flags["paused"], flags["suspended"], self._app.shutdown_mode)

    def hba_line(self, client: "ClientInfo") -> Optional[HbaRule]:
        """The line of ``auth_hba_file`` that applies to *client* (``None`` without
        ``auth_type = hba`` or without a matching line): a plugin's method reads its options
        there, as bouncer-ldap reads an ``ldap`` line's ``ldap*`` options."""
        return rule_for(self._app, client)

    def show(self, command: str) -> List[Dict[str, Any]]:
        """The rows of ``SHOW <command>`` as the console would answer now, each a mapping of
        column name to value: one of :data:`SHOW_TABLES`, or a SHOW command a plugin
        contributes (``bouncer_admin_commands``) that ``stats_users`` may run.  With
        ``workers`` above 1 they are the whole pooler's, as any worker's console answers
        (asking the other workers: this may wait, within the console's bounds); a plugin's
        own command is whole when it is marked ``on_every_worker``.

        :raises KeyError: a command not offered here.
        """
        name = command.upper()
        table = SHOW_TABLES.get(name)
        if table is not None and self._app.workers_channel is None:
            cols, build = table
            return tables.records(cols, build(self._app))
        if table is None and f"SHOW {name}" not in self._app.admin_commands:
            raise KeyError(command)
        # A stats user's console: SHOW is all a plugin reads (and *command* is a known one).
        console = ForwardedConsole(self._app, Asker(PLUGIN_ASKER, admin=False))
        result = execute_for(self._app, console, f"SHOW {name}")
        return tables.records(result.columns, result.rows)
