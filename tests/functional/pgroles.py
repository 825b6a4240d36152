"""Throwaway PostgreSQL roles for the auth tests, dropped again at teardown.

The session cluster is shared by every test module, so roles get unique names, and the
pg_hba.conf line that lets md5-stored roles log in with md5 (the cluster asks every other role
for SCRAM) is removed again.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Iterator, List, Optional

import psycopg2
import pytest

from bouncer.testing.pgcluster import PgCluster


def unique_name(prefix: str) -> str:
    """A role name no other test uses: ``prefix`` plus eight hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def literal(text: str) -> str:
    """An SQL string literal (test input is ours, but quote it properly anyway)."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


class Roles:
    """Creates login roles; md5-stored ones are members of a group that an md5 HBA line lets in.

    Call :meth:`drop_all` at the end (the ``roles`` fixtures do).
    """

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.md5_group = unique_name("h10_md5_group")
        self._created: List[str] = []
        self._hba_line = f"host all +{self.md5_group} 127.0.0.1/32 md5"
        pg.psql(f"CREATE ROLE {ident(self.md5_group)} NOLOGIN")
        pg.add_hba_line(self._hba_line)
        pg.reload()

    def create(self, prefix: str, password: Optional[str], *, encryption: str = "md5",
               valid_until: Optional[str] = None, login: bool = True,
               name: Optional[str] = None) -> str:
        """A new role (``password`` stored as ``encryption``); returns its name."""
        name = name or unique_name(prefix)
        options = ["LOGIN" if login else "NOLOGIN"]
        if password is not None:
            options.append(f"PASSWORD {literal(password)}")
        if valid_until is not None:
            options.append(f"VALID UNTIL {literal(valid_until)}")
        self.pg.psql(f"SET password_encryption = {literal(encryption)};\n"
                     f"CREATE ROLE {ident(name)} {' '.join(options)};\n"
                     + (f"GRANT {ident(self.md5_group)} TO {ident(name)};\n"
                        if encryption == "md5" else ""))
        self._created.append(name)
        return name

    def set_password(self, name: str, password: str, encryption: str = "md5") -> None:
        self.pg.psql(f"SET password_encryption = {literal(encryption)};\n"
                     f"ALTER ROLE {ident(name)} PASSWORD {literal(password)};")

    def stored_secret(self, name: str) -> str:
        return self.pg.psql(f"SELECT rolpassword FROM pg_catalog.pg_authid "
                            f"WHERE rolname = {literal(name)}")

    def drop_all(self) -> None:
        for name in [*reversed(self._created), self.md5_group]:
            self.pg.psql(f"DROP ROLE IF EXISTS {ident(name)}")
        remove_hba_line(self.pg, self._hba_line)


@pytest.fixture(scope="module")
def roles(pg: PgCluster) -> Iterator[Roles]:
    """A module's throwaway roles (import this fixture into the test module)."""
    created = Roles(pg)
    yield created
    created.drop_all()


def remove_hba_line(pg: PgCluster, line: str) -> None:
    """Remove a line added with ``pg.add_hba_line`` and reload."""
    path = os.path.join(pg.datadir, "pg_hba.conf")
    with open(path, encoding="utf-8") as hba:
        kept = [old for old in hba.read().splitlines() if old != line]
    with open(path, "w", encoding="utf-8") as hba:
        hba.write("\n".join(kept) + "\n")
    pg.reload()


def login_outcome(connect: Callable[..., Any], **params: Any) -> str:
    """``current_user`` after logging in with ``connect(**params)``, or the error text."""
    try:
        conn = connect(**params)
    except psycopg2.Error as exc:  # its text is what the user saw
        return f"refused: {str(exc).strip()}"
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            return cur.fetchone()[0]
    finally:
        conn.close()
