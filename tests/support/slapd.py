"""A throwaway OpenLDAP server for the LDAP plugin's tests: ``slapd -f`` with a slapd.conf of
its own (ldif backend, no cn=config), plain and ldaps listeners on free ports, and entries
added over LDAP as the root DN.  The directory mirrors PgBouncer's test/start_openldap_server.sh:
``dc=example,dc=net`` with ``uid=ldapuser1`` (password ``secret1``)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Dict, List, Optional

from bouncer.testing.ports import accepts_connections, free_port, wait_until

SLAPD_PATHS = ("/usr/sbin/slapd", "/usr/local/libexec/slapd")
SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
BASE_DN = "dc=example,dc=net"
ROOT_DN, ROOT_PASSWORD = f"cn=Manager,{BASE_DN}", "secret"
USERS = {"ldapuser1": "secret1"}


def find_slapd() -> Optional[str]:
    found = [path for path in SLAPD_PATHS if os.access(path, os.X_OK)]
    return found[0] if found and _schema_dir() else None


def _schema_dir() -> Optional[str]:
    found = [path for path in SCHEMA_DIRS if os.path.isdir(path)]
    return found[0] if found else None


def user_dn(user: str) -> str:
    return f"uid={user},{BASE_DN}"


class Slapd:
    """``start()`` runs slapd in the foreground (``-d 0``) so that ``stop()`` ends exactly it."""

    def __init__(self, workdir: str, cert: str, key: str) -> None:
        self.workdir = workdir
        self.port, self.ldaps_port = free_port(), free_port()
        self.cert, self.key = cert, key
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        data = os.path.join(self.workdir, "data")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        conf = os.path.join(self.workdir, "slapd.conf")
        with open(conf, "w", encoding="utf-8") as out:
            out.write(self._config(data))
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        with open(os.path.join(self.workdir, "slapd.log"), "wb") as log:
            self.proc = subprocess.Popen([str(find_slapd()), "-f", conf, "-h", urls, "-d", "0"],
                                         stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self.listening, 15, give_up=lambda: self.proc.poll() is not None):
            self.stop()
            raise RuntimeError(f"slapd did not start: {self.log_tail()}")

    def listening(self) -> bool:
        return accepts_connections(socket.AF_INET, ("127.0.0.1", self.port))

    def _config(self, data: str) -> str:
        includes = "".join(f"include {_schema_dir()}/{name}.schema\n" for name in SCHEMAS)
        return (f"{includes}"
                f"pidfile {self.workdir}/slapd.pid\n"
                # Passwords can be used to bind with, never read.
                "access to attrs=userPassword\n  by anonymous auth\n  by * none\n"
                "access to *\n  by * read\n"
                f"TLSCertificateFile {self.cert}\nTLSCertificateKeyFile {self.key}\n"
                f"database ldif\ndirectory {data}\n"
                f'suffix "{BASE_DN}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PASSWORD}\n')

    def add(self, dn: str, object_classes: List[str], attributes: Dict[str, object]) -> None:
        from ldap3 import Connection, Server  # the LDAP plugin's tests only

        conn = Connection(Server("127.0.0.1", port=self.port), ROOT_DN, ROOT_PASSWORD,
                          auto_bind=True, receive_timeout=10)
        try:
            if not conn.add(dn, object_classes, attributes):
                raise RuntimeError(f"slapd refused to add {dn}: {conn.result}")
        finally:
            conn.unbind()

    def add_user(self, user: str, password: str, parent: str = BASE_DN, **extra: str) -> str:
        dn = f"uid={user},{parent}"
        self.add(dn, ["inetOrgPerson", "posixAccount"],
                 {"uid": user, "sn": user, "cn": user, "uidNumber": 1000 + len(user),
                  "gidNumber": 100, "homeDirectory": f"/home/{user}", "userPassword": password,
                  **extra})
        return dn

    def populate(self) -> None:
        self.add(BASE_DN, ["top", "dcObject", "organization"], {"dc": "example", "o": "ExampleCo"})
        for user, password in USERS.items():
            self.add_user(user, password, mail=f"{user}@example.net")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.workdir, "slapd.log"), encoding="utf-8",
                      errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError as exc:
            return f"(no slapd log: {exc})"
