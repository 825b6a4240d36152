"""Built-in admin console commands: PgBouncer's SHOW / SET / PAUSE ... table, contributed
through the same hook plugins use to add theirs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

from bouncer.admin.builtins import BUILTIN_COMMANDS
from bouncer.plugin import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.commands import Result
    from bouncer.app import App


@hookimpl
def bouncer_admin_commands(app: "App") -> Dict[str, Callable[..., "Result"]]:
    return BUILTIN_COMMANDS
