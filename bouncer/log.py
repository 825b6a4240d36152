"""Logging in PgBouncer's line format, so operators' log parsers keep working.

A line is ``2026-11-21 10:00:00.123 UTC [pid] LOG C-0x55d0c0ffee00: db/user@127.0.0.1:5555 msg``.
Levels print as PgBouncer's: LOG (info and stats), WARNING, ERROR, FATAL, DEBUG, NOISE.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from typing import Any, Mapping, Optional, TextIO

from gevent.monkey import get_original

NOISE = 5
logging.addLevelName(NOISE, "NOISE")

_LEVEL_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "LOG", logging.WARNING: "WARNING",
                logging.ERROR: "ERROR", logging.CRITICAL: "FATAL", NOISE: "NOISE"}

#: -v once shows DEBUG, twice NOISE (PgBouncer's verbosity ladder).
_VERBOSITY = (logging.INFO, logging.DEBUG, NOISE)

ROOT = "bouncer"

#: PgBouncer formats a log message into a 2048-byte buffer: longer ones are cut.  We cut at
#: as many characters, so no client text makes a line grow without bound.
MAX_MESSAGE = 2047
_CUT_MARK = "..."

#: This process's id, for the lines (a record need not ask the kernel each time).
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


def bounded_message(record: logging.LogRecord) -> str:
    """The record's message, cut to :data:`MAX_MESSAGE` characters (tracebacks come after)."""
    message = record.getMessage()
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - len(_CUT_MARK)] + _CUT_MARK
    return message


class PgBouncerFormatter(logging.Formatter):
    """``YYYY-MM-DD HH:MM:SS.mmm TZ [pid] LEVEL message``; newlines become ``\\n\\t``.

    A login writes two lines, so the cost of a line counts in a connection storm: the time
    stamp is formatted once per second.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ("", "")  # date and time, zone: of self._second

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            local = time.localtime(second)
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", local), time.strftime("%Z", local)
            self._second = second
        stamp, zone = self._stamp
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        message = bounded_message(record)
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        message = message.replace("\n", "\\n\t")
        return f"{stamp}.{int(record.msecs):03d} {zone} [{_pid}] {level} {message}"


#: The OS's own re-entrant lock, whatever gevent patched in.
_OsRLock = get_original("_thread", "RLock")


class LineHandler(logging.Handler):
    """PgBouncer's lines to stderr and to the log file, which is reopened on SIGHUP so that
    logrotate can move it away.

    One handler for both places: a line is formatted, locked and flushed once, not once per
    place.  Its lock is the OS's, not the RLock gevent patches in (Python code, taken for
    every line): writing to a file or stderr never yields to another greenlet while the lock is
    held, and OS threads are still kept apart.  Per handler, logging was a fifth of a login's
    CPU time in a connection storm.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(PgBouncerFormatter())
        self.stderr: Optional[TextIO] = None
        self.file: Optional[TextIO] = None
        self.file_path: Optional[str] = None

    def createLock(self) -> None:
        self.lock = _OsRLock()

    @property
    def writes(self) -> bool:
        return self.stderr is not None or self.file is not None

    def emit(self, record: logging.LogRecord) -> None:
        line = ""
        for stream in (self.stderr, self.file):
            if stream is not None:  # a place that fails does not keep the line from the other
                try:
                    line = line or self.format(record) + "\n"
                    stream.write(line)
                    stream.flush()
                except RecursionError:
                    raise
                except Exception:
                    self.handleError(record)

    def open_file(self, path: Optional[str]) -> None:
        """Append to *path* from now on (None: to no file); the old file is closed first.

        :raises OSError: *path* cannot be opened (then no file is written).
        """
        self.acquire()
        try:
            old, self.file = self.file, None
            self.file_path = os.path.abspath(path) if path else None
            if old is not None:
                old.close()
            if self.file_path:
                self.file = open(self.file_path, "a", encoding="utf-8")
        finally:
            self.release()

    def reopen_file(self) -> None:
        if self.file_path:
            self.open_file(self.file_path)

    def close(self) -> None:
        self.open_file(None)
        super().close()


class SyslogFormatter(logging.Formatter):
    """Syslog adds its own time stamp; the rest of the line is PgBouncer's."""

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        return f"{level} {bounded_message(record)}"


#: The path of every record once the caller is not looked up (``logging._srcfile`` None).
_UNKNOWN_FILE = "(unknown file)"


class _LeanRecord(logging.LogRecord):
    """A record as logging makes one with the switches of skip_unused_record_fields() off,
    the same fields with the same values, in fewer steps: the file and module names of
    ``(unknown file)`` are that text itself, not derived by os.path each time (a tenth of a
    line's cost, and a login writes two lines)."""

    def __init__(self, name: str, level: int, pathname: str, lineno: int, msg: Any,
                 args: Any, exc_info: Any, func: Optional[str] = None,
                 sinfo: Optional[str] = None, **kwargs: Any) -> None:
        created = time.time()
        self.name = name
        self.msg = msg
        if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]  # logging's "%(key)s" form, with one mapping
        self.args = args
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = pathname
        if pathname == _UNKNOWN_FILE:
            self.filename = self.module = pathname
        else:
            self.filename = os.path.basename(pathname)
            self.module = os.path.splitext(self.filename)[0]
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func  # type: ignore[assignment]  # (None when unknown, as in logging)
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0
        self.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
        self.thread = self.threadName = self.processName = self.process = None
        self.taskName = None  # (Python 3.12's field, off as the others)


def skip_unused_record_fields() -> None:
    """No formatter of ours reads the thread, the process (it knows its pid), the process
    name or the caller's file and line; gathering them is most of the cost of a record (a
    thread object for each greenlet under gevent, a getpid system call).  These are the
    switches the logging HOWTO names for it ("Optimization"), and records made without them
    (:class:`_LeanRecord`).  Process-wide, so only the daemon's entry point calls it (not
    tests that build an App)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]  # (the HOWTO's switch)
    logging.setLogRecordFactory(_LeanRecord)


class LogSetup:
    """Owns bouncer's handlers; :meth:`apply` is called at start and on every reload."""

    def __init__(self, quiet: bool = False, verbosity: int = 0) -> None:
        self.quiet = quiet
        self.verbosity = verbosity
        self.logger = logging.getLogger(ROOT)
        self.logger.propagate = False
        self._lines = LineHandler()
        self._syslog: Optional[logging.Handler] = None
        self._file_path: Optional[str] = None

    def apply(self, logfile: str = "", syslog: bool = False, syslog_ident: str = "bouncer",
              syslog_facility: str = "daemon", verbose: int = 0) -> None:
        level = _VERBOSITY[min(max(self.verbosity, verbose), len(_VERBOSITY) - 1)]
        self.logger.setLevel(level)
        if not self.quiet and self._lines.stderr is None:
            self._lines.stderr = sys.stderr
        self._apply_file(logfile)
        self._attach_lines()
        self._apply_syslog(syslog, syslog_ident, syslog_facility)

    def _apply_file(self, logfile: str) -> None:
        if logfile == self._file_path:
            return
        self._file_path = logfile or None
        try:
            self._lines.open_file(self._file_path)
        finally:
            self._attach_lines()

    def _attach_lines(self) -> None:
        """The line handler sits on the logger only while it writes somewhere: a logger with
        no handler at all still shows warnings on stderr (logging's last resort), as before
        anything is configured."""
        if self._lines.writes:
            self.logger.addHandler(self._lines)  # (no-op when it is there)
        else:
            self.logger.removeHandler(self._lines)

    def _apply_syslog(self, enabled: bool, ident: str, facility: str) -> None:
        if self._syslog is not None:
            self.logger.removeHandler(self._syslog)
            self._syslog.close()
            self._syslog = None
        if not enabled:
            return
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        fac = logging.handlers.SysLogHandler.facility_names.get(facility, 3)
        handler = logging.handlers.SysLogHandler(address=address, facility=fac)
        handler.ident = f"{ident}[{os.getpid()}]: "
        handler.setFormatter(SyslogFormatter())
        self.logger.addHandler(handler)
        self._syslog = handler

    def reopen(self) -> None:
        """Reopen the log file (SIGHUP), after logrotate moved it."""
        self._lines.reopen_file()

    def detach_stderr(self) -> None:
        """Stop writing to stderr (``-d``: the daemon has no terminal)."""
        self._lines.stderr = None
        self.quiet = True
        self._attach_lines()


