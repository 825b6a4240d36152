"""The SET USER and SET POOL admin commands: change ``[users]`` and ``[pools]`` values at run time.

``SET USER name = 'max_user_connections=40 pool_mode=transaction'`` sets the keys it names and
keeps the others (cf-pgbouncer reset them; see the reference); ``key=-1`` drops the runtime
value so the ini's applies again.  ``SET POOL user.db = 'pool_size=30'`` does the same for one
pool.  Both are admin only; anything malformed is refused with PgBouncer's ``SET failed`` and
the reason, and changes nothing.  RELOAD undoes both (``App.reload`` clears the overrides).
With ``workers`` above 1 both act in every worker.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

from bouncer.admin import grammar
from bouncer.admin.commands import AdminError, Result, on_every_worker
from bouncer.admin.journal import UNTIL_RELOAD, replayed
from bouncer.admin.merge import all_acted
from bouncer.builtin.limits_shrink import apply_limits
from bouncer.config import parse_pool_key, parse_pool_options, parse_user_options
from bouncer.config.connstr import parse_connstr

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.console import Console

log = logging.getLogger(__name__)

#: Every ``[users]`` key, as the config parser knows them.
USER_KEYS = frozenset(parse_user_options(""))
#: The value that drops a runtime setting, so the ini's value applies again.
RESET = "-1"

#: The target of SET USER / SET POOL: a double-quoted name, or anything up to a blank, ``=`` or
#: quote (user names may hold dots and dashes, and ``user.db`` is checked afterwards).
_TARGET = re.compile(r'[ \t\n\r]*("(?:[^"]|"")+"|[^ \t\n\r="\']+)')


def parse_assignment(args: str) -> Tuple[str, str]:
    """``name = 'value'`` or ``name TO 'value'`` as ``(name, value)``.

    :raises grammar.GrammarError: not of that shape (the console says "invalid command").
    """
    match = _TARGET.match(args)
    if match is None:
        raise grammar.GrammarError("expected: SET USER|POOL name = 'settings'")
    name = match.group(1)
    if name.startswith('"'):
        name = name[1:-1].replace('""', '"')
    tokens = grammar.tokenize(args[match.end():])
    if len(tokens) != 2:
        raise grammar.GrammarError("expected: = 'settings'")
    operator, value = tokens
    if not (operator.kind == "equals" or (operator.kind == "word"
                                          and operator.value.upper() == "TO")):
        raise grammar.GrammarError("expected = or TO")
    if value.kind not in ("string", "word"):
        raise grammar.GrammarError("the settings must be a quoted string")
    return name, value.value


def parse_user_change(text: str) -> Dict[str, Optional[Any]]:
    """The ``[users]`` keys *text* names, typed; ``None`` for a key reset with ``-1``.

    :raises ValueError: empty text, an unknown key or a bad value (the reason).
    """
    pairs = parse_connstr(text)
    if not pairs:
        raise ValueError("no settings given: expected key=value ...")
    unknown = sorted(set(pairs) - USER_KEYS)
    if unknown:
        raise ValueError(f"unrecognized user parameter: {unknown[0]}")
    kept = {key: raw for key, raw in pairs.items() if raw.strip() != RESET}
    typed = parse_user_options(_connstr(kept))
    return {key: typed[key] if key in kept else None for key in pairs}


def _connstr(pairs: Mapping[str, str]) -> str:
    """Pairs written back as a connection string, every value quoted."""
    def quoted(raw: str) -> str:
        return "'" + raw.replace("\\", "\\\\").replace("'", "''") + "'"
    return " ".join(f"{key}={quoted(raw)}" for key, raw in pairs.items())


def _set_failed(reason: str) -> AdminError:
    return AdminError("SET failed", detail=reason)


@on_every_worker(all_acted)
@replayed(UNTIL_RELOAD)
def set_user(console: "Console", args: str) -> Result:
    name, text = parse_assignment(args)
    try:
        changes = parse_user_change(text)
    except ValueError as exc:
        raise _set_failed(str(exc)) from None
    app = console.app
    app.registry.overrides.update_user(name, changes)
    app.registry.user(name)  # a user not seen yet is listed by SHOW USERS from now on
    log.info("SET USER %s = %s", name, text)
    apply_limits(app)
    return Result("SET")


@on_every_worker(all_acted)
@replayed(UNTIL_RELOAD)
def set_pool(console: "Console", args: str) -> Result:
    key, text = parse_assignment(args)
    try:
        user, database = parse_pool_key(key)
        changes = parse_pool_options(text)
    except ValueError as exc:
        raise _set_failed(str(exc)) from None
    app = console.app
    app.registry.overrides.update_pool(user, database, changes)
    log.info("SET POOL %s = %s", key, text)
    apply_limits(app)
    return Result("SET")


COMMANDS = {"SET USER": set_user, "SET POOL": set_pool}
