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
from typing import Optional

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

#: Where a record keeps its formatted line for the next handler.
_LINE = "_pgbouncer_line"

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

    A login writes two lines to two handlers (stderr and the log file), so the cost of a line
    counts in a connection storm: the time stamp is formatted once per second, and a record
    is formatted once for all the handlers that share this format.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ("", "")  # date and time, zone: of self._second

    def format(self, record: logging.LogRecord) -> str:
        line = record.__dict__.get(_LINE)
        if line is None:
            line = self._format(record)
            record.__dict__[_LINE] = line
        return line

    def _format(self, record: logging.LogRecord) -> str:
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


class ReopenableFileHandler(logging.FileHandler):
    """A log file that is reopened on SIGHUP, so logrotate can move it away."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class SyslogFormatter(logging.Formatter):
    """Syslog adds its own time stamp; the rest of the line is PgBouncer's."""

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        return f"{level} {bounded_message(record)}"


def skip_unused_record_fields() -> None:
    """No formatter of ours reads the thread, the process (it knows its pid), the process
    name or the caller's file and line; gathering them is most of the cost of a record (a
    thread object for each greenlet under gevent, a getpid system call).  These are the
    switches the logging HOWTO names for it ("Optimization").  Process-wide, so only the
    daemon's entry point calls it (not tests that build an App)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]  # (the HOWTO's switch)


class LogSetup:
    """Owns bouncer's handlers; :meth:`apply` is called at start and on every reload."""

    def __init__(self, quiet: bool = False, verbosity: int = 0) -> None:
        self.quiet = quiet
        self.verbosity = verbosity
        self.logger = logging.getLogger(ROOT)
        self.logger.propagate = False
        self._stderr: Optional[logging.Handler] = None
        self._file: Optional[ReopenableFileHandler] = None
        self._syslog: Optional[logging.Handler] = None
        self._file_path: Optional[str] = None

    def apply(self, logfile: str = "", syslog: bool = False, syslog_ident: str = "bouncer",
              syslog_facility: str = "daemon", verbose: int = 0) -> None:
        level = _VERBOSITY[min(max(self.verbosity, verbose), len(_VERBOSITY) - 1)]
        self.logger.setLevel(level)
        self._apply_stderr()
        self._apply_file(logfile)
        self._apply_syslog(syslog, syslog_ident, syslog_facility)

    def _apply_stderr(self) -> None:
        if self.quiet or self._stderr is not None:
            return
        self._stderr = logging.StreamHandler(sys.stderr)
        self._stderr.setFormatter(PgBouncerFormatter())
        self.logger.addHandler(self._stderr)

    def _apply_file(self, logfile: str) -> None:
        if logfile == self._file_path:
            return
        if self._file is not None:
            self.logger.removeHandler(self._file)
            self._file.close()
            self._file = None
        self._file_path = logfile or None
        if logfile:
            self._file = ReopenableFileHandler(logfile, encoding="utf-8")
            self._file.setFormatter(PgBouncerFormatter())
            self.logger.addHandler(self._file)

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
        if self._file is not None:
            self._file.reopen()

    def detach_stderr(self) -> None:
        """Stop writing to stderr (``-d``: the daemon has no terminal)."""
        if self._stderr is not None:
            self.logger.removeHandler(self._stderr)
            self._stderr = None
            self.quiet = True


