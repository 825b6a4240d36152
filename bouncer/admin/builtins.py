"""The built-in admin command table, and SHOW HELP, which lists it.

``bouncer.builtin.admin_console`` contributes :data:`BUILTIN_COMMANDS` through the
``bouncer_admin_commands`` hook; plugins add theirs the same way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

from bouncer.admin import checks, control, grammar, show, sockets
from bouncer.admin.commands import Notice, Result, stats_allowed

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.console import Console

#: PgBouncer 1.25's SHOW HELP text (a NOTICE's DETAIL), line for line.
HELP_DETAIL = ("\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
               "\tSHOW PEERS|PEER_POOLS\n"
               "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n"
               "\tSHOW DNS_HOSTS|DNS_ZONES\n"
               "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n"
               "\tSET key = arg\n"
               "\tRELOAD\n"
               "\tPAUSE [<db>]\n"
               "\tRESUME [<db>]\n"
               "\tDISABLE <db>\n"
               "\tENABLE <db>\n"
               "\tRECONNECT [<db>]\n"
               "\tKILL [<db>]\n"
               "\tKILL_CLIENT <client_id>\n"
               "\tSUSPEND\n"
               "\tSHUTDOWN\n"
               "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"
               "\tWAIT_CLOSE [<db>]")


@stats_allowed
def show_help(console: "Console", args: str) -> Result:
    """PgBouncer's usage notice, then one line per command of bouncer's own or a plugin's."""
    grammar.no_arguments(args)
    added = sorted(set(console.app.admin_commands) - set(BUILTIN_COMMANDS) | set(OWN_COMMANDS))
    detail = HELP_DETAIL + "".join(f"\n\t{word}" for word in added)
    return Result("SHOW", notices=[Notice("Console usage", detail)])


#: bouncer's own commands: SHOW HELP lists them after PgBouncer's text, as it lists plugins'.
OWN_COMMANDS: Dict[str, Callable[..., Result]] = {**checks.COMMANDS}

BUILTIN_COMMANDS: Dict[str, Callable[..., Result]] = {
    **show.COMMANDS, **sockets.COMMANDS, **control.COMMANDS, "SHOW HELP": show_help,
    **OWN_COMMANDS,
}
