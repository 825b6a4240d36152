"""Running one pooler process (bouncer, or the real pgbouncer for comparison) from a test.

The ini text may hold ``@PORT@`` and ``@DIR@`` placeholders: they become a free TCP port and
the work directory, so a test never hard-codes either.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from bouncer.testing.pgcluster import (PG_OWNER, STANDARD_PASSWORDS, find_pg_bindir,
                                     running_as_root)
from bouncer.testing.ports import accepts_connections, free_port, wait_until

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUNCER_PROGRAM = (sys.executable, "-m", "bouncer")
INI_NAME = "bouncer.ini"
USERLIST_NAME = "userlist.txt"
OUTPUT_NAME = "bouncer.out"
PGBOUNCER_DEFAULT_PORT = 6432
PGBOUNCER_DEFAULT_SOCKET_DIR = "/tmp"
PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


class BouncerStartError(RuntimeError):
    """The process exited, or never listened, during start(); ``log`` holds its output."""

    def __init__(self, message: str, returncode: Optional[int], log: str) -> None:
        super().__init__(f"{message}\n--- pooler output ---\n{log}")
        self.returncode = returncode
        self.log = log


def find_pgbouncer() -> Optional[str]:
    """The real pgbouncer binary (Debian puts it in /usr/sbin, often not on PATH), or None."""
    found = shutil.which("pgbouncer")
    return found or next((path for path in PGBOUNCER_PATHS if os.access(path, os.X_OK)), None)


def pgbouncer_user() -> Optional[str]:
    """pgbouncer refuses to run as root: when we are root, run it as the postgres user."""
    return PG_OWNER if running_as_root() else None


def userlist_text(userlist: Mapping[str, str]) -> str:
    """PgBouncer's auth_file format: ``"user" "secret"`` per line, inner quotes doubled."""
    def quoted(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'
    return "".join(f"{quoted(user)} {quoted(secret)}\n" for user, secret in userlist.items())


class BouncerProcess:
    """Writes the config files into ``workdir``, starts the pooler and waits until it listens.

    ``userlist=None`` writes the standard users (md5user, scramuser with their plain passwords);
    pass ``{}`` for an empty file.  ``extra_files`` maps names (relative to ``workdir``) to
    contents; str contents get the placeholders replaced too.  ``program`` and ``run_as`` exist
    for the benchmark, which runs the real pgbouncer as the postgres user.
    """

    def __init__(self, workdir: Union[str, "os.PathLike[str]"], ini_text: str,
                 userlist: Optional[Mapping[str, str]] = None,
                 extra_files: Optional[Mapping[str, Union[str, bytes]]] = None,
                 flags: Sequence[str] = (), program: Sequence[str] = BOUNCER_PROGRAM,
                 run_as: Optional[str] = None, start_timeout: float = 15.0) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        if run_as:  # it writes its pidfile, logfile and unix socket here
            shutil.chown(self.workdir, run_as, run_as)
        self.ini_path = os.path.join(self.workdir, INI_NAME)
        self.output_path = os.path.join(self.workdir, OUTPUT_NAME)
        self.command = [*program, *flags, self.ini_path]
        self.run_as = run_as
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self._free_port = free_port()
        self.write_ini(ini_text)
        self.write_userlist(STANDARD_PASSWORDS if userlist is None else userlist)
        for name, content in (extra_files or {}).items():
            self.write_file(name, content)
        self.start()

    # -- files -----------------------------------------------------------------------------
    def render(self, text: str) -> str:
        return text.replace("@PORT@", str(self._free_port)).replace("@DIR@", self.workdir)

    def write_ini(self, text: str) -> None:
        """Replace the config (placeholders keep their values); call reload() to apply it."""
        self.ini_text = self.render(text)
        self.write_file(INI_NAME, self.ini_text)

    def write_userlist(self, userlist: Mapping[str, str]) -> None:
        self.write_file(USERLIST_NAME, userlist_text(userlist))

    def write_file(self, name: str, content: Union[str, bytes]) -> str:
        path = os.path.join(self.workdir, name)
        data = self.render(content).encode() if isinstance(content, str) else content
        with open(path, "wb") as out:
            out.write(data)
        return path

    # -- where it listens (read from the ini, PgBouncer's defaults otherwise) ---------------
    @property
    def port(self) -> int:
        return int(self._setting("listen_port") or PGBOUNCER_DEFAULT_PORT)

    @property
    def host(self) -> str:
        return "::1" if self._setting("listen_addr") == "::1" else "127.0.0.1"

    @property
    def socket_dir(self) -> Optional[str]:
        """The unix socket directory, or None when unix sockets are disabled."""
        value = self._setting("unix_socket_dir")
        return PGBOUNCER_DEFAULT_SOCKET_DIR if value is None else (value or None)

    def _setting(self, key: str) -> Optional[str]:
        """The last value of *key* in [pgbouncer] (a plugin's section may use the same key)."""
        found, section = None, None
        for header, value in re.findall(
                rf"^\[([^\]]*)\]|^[ \t]*{key}[ \t]*=[ \t]*(.*?)[ \t]*$", self.ini_text, re.M):
            if header:
                section = header.strip().lower()
            elif section == "pgbouncer":
                found = value
        return found

    # -- process control -------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart after stop()) and wait until the listener accepts connections."""
        with open(self.output_path, "ab") as output:
            # A new session: a Ctrl-C meant for the test runner or demo must not reach it.
            self.proc = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=self._environment(),
                                         start_new_session=True, user=self.run_as,
                                         group=self.run_as, extra_groups=self._no_groups())
        if not wait_until(self._listening, self.start_timeout, give_up=lambda: not self.alive):
            code = self.proc.poll()
            if code is None:
                self.stop()
            raise BouncerStartError(f"{' '.join(self.command)} did not start listening "
                                    f"(exit code {code})", code, self.log_text())

    def _environment(self) -> Dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        return env

    def _no_groups(self) -> Optional[List[str]]:
        return [] if self.run_as else None

    def _listening(self) -> bool:
        if self._setting("listen_addr"):
            return accepts_connections(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                                       (self.host, self.port))
        return accepts_connections(socket.AF_UNIX,
                                   os.path.join(self.socket_dir or "", f".s.PGSQL.{self.port}"))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "never started"
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def reload(self) -> None:
        """SIGHUP: re-read the ini and auth files, as pgbouncer does."""
        self.signal(signal.SIGHUP)

    def wait(self, timeout: float) -> int:
        """Exit code once the process ends; raises subprocess.TimeoutExpired otherwise."""
        assert self.proc is not None, "never started"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10) -> Optional[int]:
        """SIGQUIT (immediate shutdown), then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.alive:
            self.signal(signal.SIGQUIT)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> "BouncerProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- its output ------------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything the process wrote to stdout/stderr so far (all starts included)."""
        try:
            with open(self.output_path, encoding="utf-8", errors="replace") as output:
                return output.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 10, since: int = 0) -> "re.Match[str]":
        """Wait for ``pattern`` (a regex) in the output after character offset ``since``.

        Take ``since = len(proc.log_text())`` before an action to ignore older lines.
        """
        regex = re.compile(pattern, re.M)
        found: List["re.Match[str]"] = []

        def seen() -> bool:
            match = regex.search(self.log_text(), since)
            if match:
                found.append(match)
            return bool(match)

        if not wait_until(seen, timeout, interval=0.05):
            raise AssertionError(f"no {pattern!r} in the pooler output within {timeout}s:\n"
                                 f"{self.log_tail()}")
        return found[0]

    # -- clients ---------------------------------------------------------------------------
    def connect(self, **params: Any) -> Any:
        """A psycopg2 connection; defaults: db testdb, md5user, the user's standard password."""
        import psycopg2  # test dependency only: the demo and the bench do not need it

        user = params.pop("user", "md5user")
        options: Dict[str, Any] = {"host": self.host, "port": self.port, "dbname": "testdb",
                                   "user": user, "connect_timeout": 5}
        if STANDARD_PASSWORDS.get(user) is not None:
            options["password"] = STANDARD_PASSWORDS[user]
        options.update(params)
        return psycopg2.connect(**options)

    def admin(self, sql: str, user: str = "scramuser", **params: Any) -> List[tuple]:
        """Run one admin-console command; the console speaks simple query only: autocommit."""
        conn = self.connect(dbname="pgbouncer", user=user, **params)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    def psql(self, args: Union[str, Sequence[str]], user: str = "md5user",
             dbname: str = "testdb", password: Optional[str] = None,
             input: Optional[str] = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run the real psql against the pooler; a plain string is taken as one ``-c`` command.

        Output is captured as text; ON_ERROR_STOP is set, so an SQL error gives exit code 3.
        """
        args = ["-c", args] if isinstance(args, str) else list(args)
        password = STANDARD_PASSWORDS.get(user) if password is None else password
        env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=user,
                   PGDATABASE=dbname, PGCONNECT_TIMEOUT="5")
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        command = [os.path.join(find_pg_bindir(), "psql"), "-X", "-v", "ON_ERROR_STOP=1", *args]
        return subprocess.run(command, input=input, capture_output=True, text=True, env=env,
                              timeout=timeout)

