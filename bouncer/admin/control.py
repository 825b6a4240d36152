"""Admin commands that change the running pooler: SET, RELOAD, PAUSE, RESUME, SUSPEND,
DISABLE, ENABLE, RECONNECT, KILL, KILL_CLIENT, SHUTDOWN and WAIT_CLOSE.

The work itself is done by :mod:`bouncer.operations` and the App; this module parses the
arguments, checks what PgBouncer checks first, and answers with PgBouncer's tags and wording.

With ``workers`` above 1 every command acts on the whole pooler: it runs in every worker over
the control channel (:mod:`bouncer.admin.worker_channel`) and replies once all have acted, or
with an error naming the worker that did not; KILL_CLIENT goes to the worker that owns the
client.  RELOAD and SHUTDOWN also tell the supervisor, with signals of their own
(:mod:`bouncer.signals`): RELOAD has it reopen its log file; SHUTDOWN has it stop and pass the
shutdown on, and each worker replies once it has stopped accepting and the supervisor has
passed it on, so the reply comes when nobody new gets into the pooler.  A worker the console
cannot reach still gets the shutdown that way.  The commands whose change lasts are marked
for the supervisor's journal, which a restarted worker replays (:mod:`bouncer.admin.journal`).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, List, Optional

import gevent

from bouncer import operations
from bouncer.admin import grammar
from bouncer.admin.commands import (AdminError, InvalidCommand, Notice, Result,
                                     admin_access_needed, asker_of, on_every_worker,
                                     stats_allowed)
from bouncer.admin.journal import KEPT, RELOAD, UNTIL_RELOAD, replayed
from bouncer.admin.merge import all_acted, all_reloaded, all_stopped
from bouncer.admin.show import FAKE_PARAMETERS
from bouncer.admin.worker_channel import TIMEOUT
from bouncer.config import SETTINGS_BY_NAME, Config, parse_setting, validate
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.net.tls import is_tls_setting
from bouncer.proto import sqlstate
from bouncer.signals import POOLER_SHUTDOWN_SIGNALS, REOPEN_SUPERVISOR_LOG

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.console import Console
    from bouncer.app import App

log = logging.getLogger(__name__)

#: PgBouncer's notice for a TLS setting that was SET but could not be used (yet).
TLS_NOT_APPLIED = "TLS settings could not be applied, still using old configuration"

#: SHUTDOWN's optional argument -> the App's shutdown mode.
SHUTDOWN_MODES = {None: "immediate", "WAIT_FOR_SERVERS": "wait_for_servers",
                  "WAIT_FOR_CLIENTS": "wait_for_clients"}


def _database_argument(args: str, refusal: str) -> Optional[str]:
    """The optional database name; the console's own database is refused with *refusal*."""
    name = grammar.optional_name(args)
    if name == ADMIN_DATABASE:
        raise AdminError(f"{refusal}: {name}")
    return name


def _required_database(args: str, refusal: str) -> str:
    name = _database_argument(args, refusal)
    if name is None:
        raise AdminError("a database is required")
    return name


def _refuse_when_paused(app: "App") -> None:
    if app.paused or app.suspended:
        raise AdminError("already suspended/paused")


def _log_issued(command: str, database: Optional[str]) -> None:
    """PgBouncer's "PAUSE 'db' command issued" log line."""
    log.info("%s%s command issued", command, f" '{database}'" if database else "")


# -- SET -------------------------------------------------------------------------------------

@stats_allowed  # the faked driver parameters may be SET by anyone; real settings check below
@on_every_worker(all_acted)
@replayed(UNTIL_RELOAD)
def set_setting(console: "Console", args: str) -> Result:
    key, raw = grammar.parse_set(args)
    if key.lower() in FAKE_PARAMETERS:
        return Result("SET", notices=[Notice("SET ignored")])
    if not console.is_admin():
        raise admin_access_needed()
    app = console.app
    new = changed_config(app, key, raw)
    notices: List[Notice] = []
    if not is_tls_setting(key.lower()):
        app.apply_settings(new)
    elif not app.apply_tls_setting(new):
        notices.append(Notice(TLS_NOT_APPLIED))
    log.info("SET %s = %s", key, raw)
    return Result("SET", notices=notices)


def changed_config(app: "App", key: str, raw: str) -> Config:
    """The running configuration with setting *key* set to *raw*.

    :raises AdminError: unknown setting, one that needs a restart, or a bad value (the
        reason goes in the error's detail, the message is PgBouncer's "SET failed").
    """
    setting = SETTINGS_BY_NAME.get(key.lower())
    if setting is None:
        raise AdminError("SET failed", detail=f"unknown setting: {key}")
    if not setting.reloadable:
        raise AdminError("SET failed", detail=f"{setting.name} cannot be changed while "
                                              "running; change the file and restart")
    try:
        value = parse_setting(setting.name, raw)
    except ValueError as exc:
        raise AdminError("SET failed", detail=f"{setting.name}: {exc}") from None
    config = app.config
    new = dataclasses.replace(config, settings={**config.settings, setting.name: value},
                              explicit=config.explicit | {setting.name})
    problems = validate(new) + app.hooks.validate_config(new)
    if problems:
        raise AdminError("SET failed", detail="; ".join(problems))
    return new


# -- RELOAD, SHUTDOWN ------------------------------------------------------------------------

@on_every_worker(all_reloaded)
@replayed(RELOAD)
def reload(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    log.info("RELOAD command issued")
    app = console.app
    problems = app.reload()
    if problems:
        raise AdminError("RELOAD failed, see logs for additional details",
                         sqlstate.CONFIG_FILE_ERROR, detail="; ".join(problems))
    # Its log file only, as each worker reopens its own: the workers reload as the console
    # asks them (a SIGHUP passed on would reload them twice).
    app.signal_supervisor(REOPEN_SUPERVISOR_LOG)
    return Result("RELOAD")


@on_every_worker(all_stopped)
def shutdown(console: "Console", args: str) -> Result:
    word = grammar.optional_name(args)
    key = word.upper() if word is not None else None
    if key not in SHUTDOWN_MODES:
        raise InvalidCommand()
    log.info("SHUTDOWN%s command issued", f" {key}" if key else "")
    app, mode = console.app, SHUTDOWN_MODES[key]
    # Before the reply, as PgBouncer closes its TCP sockets before it answers: once the reply
    # is out nobody new gets in (with workers, in no worker: see all_stopped).  It also ends
    # the handover of the clients SHOW FDS listed: the new process closes this console once
    # it has the reply, and the RESUME that follows must not serve the clients it took.
    began = app.begin_shutdown(mode)
    _stop_the_supervisor(app, mode)
    if not began:  # SHUTDOWN given twice: the first one waits and exits
        return Result("SHUTDOWN")
    # The reply goes out first; the wait and the exit run in their own greenlet, so a waiting
    # shutdown leaves this console usable (SHOW CLIENTS while clients drain).
    return Result("SHUTDOWN", after=lambda: gevent.spawn(app.finish_shutdown))


def _stop_the_supervisor(app: "App", mode: str) -> None:
    """With workers, have the supervisor stop and pass the shutdown on to every worker (to
    those the console cannot reach, too), and wait until it has: then it restarts no worker
    that exits, and its copies of the listening sockets are closed."""
    signum = next(number for number, name in POOLER_SHUTDOWN_SIGNALS.items() if name == mode)
    if app.signal_supervisor(signum) and not app.supervisor_stopped.wait(TIMEOUT):
        log.warning("the supervisor did not pass the shutdown on within %g s", TIMEOUT)


# -- PAUSE, RESUME, SUSPEND ------------------------------------------------------------------

@on_every_worker(all_acted)
@replayed(KEPT)
def pause(console: "Console", args: str) -> Result:
    database = _database_argument(args, "cannot pause admin db")
    _refuse_when_paused(console.app)
    _log_issued("PAUSE", database)
    operations.pause(console.app, database)
    return Result("PAUSE")


@on_every_worker(all_acted)
@replayed(KEPT)
def resume(console: "Console", args: str) -> Result:
    database = _database_argument(args, "cannot resume admin db")
    app = console.app
    _log_issued("RESUME", database)
    if database is None:
        if app.shutdown_mode is not None:
            raise AdminError("pooler is shutting down")
        if not (app.paused or app.suspended
                or any(db.paused for db in app.registry.databases.values())):
            raise AdminError("pooler is not paused/suspended")
    operations.resume(app, database)
    return Result("RESUME")


@on_every_worker(all_acted)
def suspend(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    app = console.app
    _refuse_when_paused(app)
    if any(db.paused for db in app.registry.databases.values()):
        raise AdminError("cannot suspend with paused databases")
    _log_issued("SUSPEND", None)
    console.suspended_pooler = True
    operations.suspend(app)
    return Result("SUSPEND")


# -- DISABLE, ENABLE, RECONNECT, WAIT_CLOSE, KILL, KILL_CLIENT -------------------------------

def _database_command(tag: str, operation, verb: str, required: bool, lasting: bool):
    """A command that names a database (optional unless *required*) and runs *operation*;
    *lasting*: what it changes holds until undone (a restarted worker replays it)."""
    def run(console: "Console", args: str) -> Result:
        refusal = f"cannot {verb} admin db"
        database = (_required_database if required else _database_argument)(args, refusal)
        _log_issued(tag, database)
        operation(console.app, database)
        return Result(tag)
    run.__name__ = tag.lower()
    return on_every_worker(all_acted)(replayed(KEPT)(run) if lasting else run)


disable = _database_command("DISABLE", operations.disable, "disable", required=True,
                            lasting=True)
enable = _database_command("ENABLE", operations.enable, "enable", required=True, lasting=True)
reconnect = _database_command("RECONNECT", operations.reconnect, "reconnect", required=False,
                              lasting=False)
wait_close = _database_command("WAIT_CLOSE", operations.wait_close, "wait in",
                               required=False, lasting=False)


@on_every_worker(all_acted)
@replayed(KEPT)
def kill(console: "Console", args: str) -> Result:
    database = _database_argument(args, "cannot kill admin db")
    _refuse_when_paused(console.app)
    _log_issued("KILL", database)
    operations.kill(console.app, database)
    return Result("KILL")


def kill_client(console: "Console", args: str) -> Result:
    word = grammar.optional_name(args)
    if word is None or not (word.isascii() and word.isdigit()):
        raise AdminError("invalid client pointer supplied")
    client_id, channel = int(word), console.app.workers_channel
    owner = channel.owner_of(client_id) if channel is not None else None
    if channel is not None and owner is not None:  # another worker's client
        return channel.forward(owner, f"KILL_CLIENT {client_id}", asker_of(console))
    operations.kill_client(console.app, client_id)
    return Result("KILL_CLIENT")


COMMANDS = {
    "SET": set_setting,
    "RELOAD": reload,
    "SHUTDOWN": shutdown,
    "PAUSE": pause,
    "RESUME": resume,
    "SUSPEND": suspend,
    "DISABLE": disable,
    "ENABLE": enable,
    "RECONNECT": reconnect,
    "WAIT_CLOSE": wait_close,
    "KILL": kill,
    "KILL_CLIENT": kill_client,
}
