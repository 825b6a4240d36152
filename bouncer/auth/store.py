"""The one global user store: every user bouncer knows, and where its credentials come from.

PgBouncer's old bug (a user listed in ``[users]`` only for its limits was taken as "known", so
auth_query was skipped and the empty password failed every login) cannot happen here: a user's
*settings* and its *credentials* are recorded separately, and a user without a secret is
simply not answered for, so the next backend (auth_query) is asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional

#: Where a secret came from (shown in logs and SHOW USERS' extra column).
SOURCE_AUTH_FILE = "auth_file"
SOURCE_AUTH_QUERY = "auth_query"
SOURCE_DATABASE = "database"


@dataclass(frozen=True)
class Credentials:
    """A user's stored secret.

    :param user: the user name.
    :param secret: a plain password, an ``md5...`` secret or a ``SCRAM-SHA-256$...`` secret;
        ``None`` when the user is known but has no password (only ``trust`` can let it in).
    :param source: which backend supplied it (``auth_file``, ``auth_query``, ``database``, or a
        plugin's own name).
    """

    user: str
    secret: Optional[str]
    source: str

    def __repr__(self) -> str:  # never print a secret, whatever the verbosity
        return f"Credentials(user={self.user!r}, source={self.source!r})"


class UserStore:
    """Credentials from auth_file, plus the names of users configured in ``[users]``."""

    def __init__(self) -> None:
        self._userlist: Dict[str, Credentials] = {}
        self._configured: frozenset = frozenset()

    def load_userlist(self, entries: Mapping[str, str]) -> None:
        """Replace the auth_file credentials (at start and on RELOAD)."""
        self._userlist = {user: Credentials(user, secret, SOURCE_AUTH_FILE)
                          for user, secret in entries.items()}

    def set_configured_users(self, names: Iterable[str]) -> None:
        """Record the users that have a ``[users]`` entry (settings, not credentials)."""
        self._configured = frozenset(names)

    def from_userlist(self, user: str) -> Optional[Credentials]:
        """The auth_file credentials of *user*, or ``None`` when auth_file does not list it."""
        return self._userlist.get(user)

    def provenance(self, user: str) -> str:
        """Where this user is known from, for logs: e.g. ``auth_file+[users]`` or ``unknown``."""
        parts = []
        if user in self._userlist:
            parts.append(SOURCE_AUTH_FILE)
        if user in self._configured:
            parts.append("[users]")
        return "+".join(parts) or "unknown"

    def names(self) -> frozenset:
        """Every user known from auth_file or ``[users]`` (SHOW USERS lists them)."""
        return frozenset(self._userlist) | self._configured

    def __len__(self) -> int:
        return len(self._userlist)
