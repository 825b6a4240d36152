"""A throwaway PostgreSQL cluster carrying the roles, databases and auth matrix the tests rely on.

Roles (see :data:`STANDARD_PASSWORDS`): ``md5user`` (md5 password, md5 over TCP), ``scramuser``
(SCRAM password, superuser, scram-sha-256 over TCP), ``trustuser`` (no password, trust over TCP)
and ``postgres`` (superuser, trust over the unix socket only).  Databases ``testdb`` and
``bench`` belong to ``scramuser``; the other two roles may read them.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence

from bouncer.testing.ports import free_port, ipv6_loopback_works, wait_until

PG_OWNER = "postgres"
STANDARD_PASSWORDS: Dict[str, str] = {"md5user": "md5pass", "scramuser": "scrampass"}
STANDARD_DATABASES = ("testdb", "bench")
READERS = "md5user, trustuser"


def find_pg_bindir() -> str:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb, else ``pg_config --bindir``."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_of_path)
    if initdbs:
        return os.path.dirname(initdbs[-1])
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                check=True).stdout.strip()
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    raise RuntimeError("PostgreSQL server binaries (initdb) not found: "
                       "apt-get install postgresql")


def _version_of_path(initdb_path: str) -> tuple:
    version = initdb_path.split(os.sep)[-3]  # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def running_as_root() -> bool:
    return os.geteuid() == 0


def make_shared_tempdir(prefix: str = "bouncer-") -> str:
    """A temp dir the ``postgres`` system user can traverse (mkdtemp alone gives 0700)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


def give_to_pg_owner(path: str) -> None:
    """chown ``path`` (recursively) to the postgres system user; a no-op when not root."""
    if not running_as_root():
        return
    for root, _subdirs, files in os.walk(path):
        shutil.chown(root, PG_OWNER, PG_OWNER)
        for name in files:
            shutil.chown(os.path.join(root, name), PG_OWNER, PG_OWNER)


def _check_reachable_by_pg_owner(path: str) -> None:
    """Fail early with a useful message instead of an obscure initdb permission error."""
    owner_uid = pwd.getpwnam(PG_OWNER).pw_uid
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        mode = os.stat(parent)
        if not (mode.st_mode & 0o001 or mode.st_uid == owner_uid):
            raise RuntimeError(f"{parent} is not searchable by the {PG_OWNER} user, which runs "
                               f"PostgreSQL when we are root: use make_shared_tempdir()")
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


class PgCluster:
    """One PostgreSQL instance under ``basedir`` (data dir, unix socket and log file)."""

    def __init__(self, basedir: str, port: Optional[int] = None) -> None:
        self.basedir = os.path.abspath(basedir)
        self.port = port or free_port()
        self.bindir = find_pg_bindir()
        self.datadir = os.path.join(self.basedir, "data")
        self.logfile = os.path.join(self.basedir, "postgres.log")
        self.socket_dir = self.basedir
        self.listen_addresses = ["127.0.0.1"] + (["::1"] if ipv6_loopback_works() else [])
        self.running = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """initdb on first use, start the server, and create the standard roles and databases."""
        fresh = not os.path.exists(os.path.join(self.datadir, "PG_VERSION"))
        if fresh:
            self._initdb()
        self._run_as_owner([self._bin("pg_ctl"), "start", "-w", "-t", "60",
                            "-D", self.datadir, "-l", self.logfile])
        self.running = True
        atexit.register(self.stop)
        if fresh:
            self._create_standard_objects()

    def stop(self) -> None:
        """Fast shutdown (disconnects clients); safe to call twice."""
        if not self.running:
            return
        self._run_as_owner([self._bin("pg_ctl"), "stop", "-w", "-m", "fast", "-D", self.datadir])
        self.running = False
        atexit.unregister(self.stop)

    def reload(self) -> None:
        """Re-read postgresql.conf and pg_hba.conf; waits until new backends see the change."""
        loaded_before = self.psql("SELECT pg_conf_load_time()")
        self.psql("SELECT pg_reload_conf()")
        if not wait_until(lambda: self.psql("SELECT pg_conf_load_time()") != loaded_before, 10):
            raise RuntimeError("PostgreSQL did not reload its configuration\n" + self.log_tail())
        self._check_config_files()

    # -- queries and connection strings ----------------------------------------------------
    def psql(self, sql: str, user: str = "postgres", db: str = "postgres") -> str:
        """Run ``sql`` (several statements allowed) over the unix socket; unaligned tuples out."""
        args = [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", self.socket_dir, "-p", str(self.port), "-U", user, "-d", db, "-f", "-"]
        return _run(args, input_text=sql).rstrip("\n")

    def dsn(self, user: str = "scramuser", db: str = "testdb", password: Optional[str] = None,
            host: str = "127.0.0.1") -> str:
        """libpq keyword/value string; the standard password of ``user`` unless one is given."""
        password = STANDARD_PASSWORDS.get(user) if password is None else password
        parts = [f"host={host}", f"port={self.port}", f"dbname={db}", f"user={user}"]
        if password is not None:
            parts.append(f"password={_quote_libpq(password)}")
        return " ".join(parts)

    def pgbench_init(self, db: str, scale: int) -> None:
        """Create pgbench tables in ``db`` (owned by scramuser, so the readers can SELECT)."""
        _run([self._bin("pgbench"), "-i", "-q", "-s", str(scale), "-h", self.socket_dir,
              "-p", str(self.port), "-U", "scramuser", db])

    # -- configuration changes -------------------------------------------------------------
    def add_hba_line(self, line: str, first: bool = True) -> None:
        """Add a pg_hba.conf line (first match wins, hence the default); then call reload()."""
        with open(self._hba_path(), encoding="utf-8") as hba:
            lines = hba.read().splitlines()
        lines = [line] + lines if first else lines + [line]
        self._write_hba(lines)

    def set_conf(self, settings: Dict[str, str]) -> None:
        """Append postgresql.conf settings (later lines win); values are written verbatim."""
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def enable_ssl(self, cert: str, key: str, ca: Optional[str] = None) -> None:
        """Serve TLS with ``cert``/``key`` (and verify client certs against ``ca`` if given)."""
        settings = {"ssl": "on",
                    "ssl_cert_file": _sql_literal(self._install_file(cert, "server.crt")),
                    "ssl_key_file": _sql_literal(self._install_file(key, "server.key"))}
        if ca is not None:
            settings["ssl_ca_file"] = _sql_literal(self._install_file(ca, "root.crt"))
        self.set_conf(settings)
        self.reload()
        if self.psql("SHOW ssl") != "on":
            raise RuntimeError("PostgreSQL refused the TLS settings\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except FileNotFoundError:
            return "(no PostgreSQL log yet)"

    # -- internals -------------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _hba_path(self) -> str:
        return os.path.join(self.datadir, "pg_hba.conf")

    def _run_as_owner(self, args: List[str]) -> str:
        # initdb and postgres refuse to run as root; the cwd must be readable by the owner too.
        prefix = ["runuser", "-u", PG_OWNER, "--"] if running_as_root() else []
        return _run(prefix + args, cwd=self.basedir)

    def _initdb(self) -> None:
        os.makedirs(self.basedir, exist_ok=True)
        if running_as_root():
            _check_reachable_by_pg_owner(self.basedir)
            give_to_pg_owner(self.basedir)
        self._run_as_owner([self._bin("initdb"), "-D", self.datadir, "-U", "postgres",
                            "-E", "UTF8", "--no-locale", "--auth-local=trust",
                            "--auth-host=scram-sha-256"])
        self.set_conf(self._base_settings())
        self._write_hba(self._standard_hba())

    def _base_settings(self) -> Dict[str, str]:
        # Durability off: throwaway data, and the tests should measure the pooler, not fsync.
        return {
            "port": str(self.port),
            "listen_addresses": _sql_literal(", ".join(self.listen_addresses)),
            "unix_socket_directories": _sql_literal(self.socket_dir),
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "log_line_prefix": _sql_literal("%m [%p] %q%u@%d "),
        }

    def _standard_hba(self) -> List[str]:
        lines = ["local all all trust"]
        for net in ("127.0.0.1/32", "::1/128"):
            lines += [f"host all md5user {net} md5",
                      f"host all trustuser {net} trust",
                      f"host all all {net} scram-sha-256"]
        return lines

    def _write_hba(self, lines: Sequence[str]) -> None:
        # Truncating the existing file keeps its owner (postgres) even when we are root.
        with open(self._hba_path(), "w", encoding="utf-8") as hba:
            hba.write("\n".join(lines) + "\n")

    def _create_standard_objects(self) -> None:
        self.psql(
            "SET password_encryption = 'md5';\n"
            f"CREATE ROLE md5user LOGIN PASSWORD '{STANDARD_PASSWORDS['md5user']}';\n"
            "SET password_encryption = 'scram-sha-256';\n"
            f"CREATE ROLE scramuser LOGIN SUPERUSER PASSWORD '{STANDARD_PASSWORDS['scramuser']}';\n"
            "CREATE ROLE trustuser LOGIN;\n"
            + "".join(f"CREATE DATABASE {db} OWNER scramuser;\n" for db in STANDARD_DATABASES))
        for db in STANDARD_DATABASES:
            self.psql(f"GRANT USAGE ON SCHEMA public TO {READERS};\n"
                      f"ALTER DEFAULT PRIVILEGES FOR ROLE scramuser IN SCHEMA public "
                      f"GRANT SELECT ON TABLES TO {READERS};", db=db)
        # PostgreSQL 15 no longer lets everyone create in public; tests may want scratch tables.
        self.psql(f"GRANT CREATE ON SCHEMA public TO {READERS};", db="testdb")

    def _install_file(self, source: str, name: str) -> str:
        """Copy a file into the data dir, owned by the server user (keys must be 0600)."""
        target = os.path.join(self.datadir, name)
        shutil.copyfile(source, target)
        os.chmod(target, 0o600)
        if running_as_root():
            shutil.chown(target, PG_OWNER, PG_OWNER)
        return target

    def _check_config_files(self) -> None:
        errors = self.psql(
            "SELECT format('%s:%s: %s', sourcefile, sourceline, error) FROM pg_file_settings "
            "WHERE error IS NOT NULL UNION ALL "
            "SELECT format('pg_hba.conf:%s: %s', line_number, error) FROM pg_hba_file_rules "
            "WHERE error IS NOT NULL")
        if errors:
            raise RuntimeError("PostgreSQL configuration errors:\n" + errors)


def _run(args: List[str], input_text: Optional[str] = None, cwd: Optional[str] = None) -> str:
    """Run a command; on failure raise with its output (CalledProcessError hides stderr)."""
    result = subprocess.run(args, input=input_text, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result.stdout


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote_libpq(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
