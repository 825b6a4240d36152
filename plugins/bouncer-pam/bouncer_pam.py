"""PAM authentication for bouncer: PgBouncer's ``auth_type = pam``.

The client is asked for a cleartext password, which PAM checks (``pam_authenticate``, then
``pam_acct_mgmt``, as PgBouncer does) under the service named by ``[plugin.pam] service``,
PgBouncer's ``pgbouncer`` by default; bouncer then logs in to PostgreSQL with that password.
PAM is a C library whose modules block (files, helpers, network): each check runs in gevent's
threadpool, so other clients are served meanwhile.  PAM is not offered in ``auth_hba_file``
(PgBouncer does not either).  On python-pam (Debian: python3-pampy).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Tuple

import gevent
import pam

from bouncer.plugin import ClientInfo, Setting, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.plugin.context import PluginContext

log = logging.getLogger("bouncer.plugins.pam")  # under bouncer's own logger

SECTION = METHOD = "pam"
SETTINGS = (
    Setting("service", "str", "pgbouncer", True,
            "PAM service that checks passwords (/etc/pam.d/SERVICE)"),
)


class Authenticators:
    """python-pam's PamAuthenticators, each lent to one thread at a time (it keeps the state
    of its call).  Made in a greenlet, never in a worker thread: making one looks libpam up by
    running ldconfig, and gevent runs subprocesses from the hub's thread only."""

    def __init__(self) -> None:
        self._idle: List[Any] = []

    def check(self, service: str, user: str, password: str) -> Tuple[bool, str]:
        """Whether PAM accepts *password* for *user*, and PAM's word for why not; the PAM
        calls run in gevent's threadpool."""
        if "\0" in user or "\0" in password:
            return False, "a NUL character in the user name or password"
        authenticator = self._idle.pop() if self._idle else pam.PamAuthenticator()
        try:
            return gevent.get_hub().threadpool.apply(
                _authenticate, (authenticator, service, user, password))
        finally:
            self._idle.append(authenticator)


def _authenticate(authenticator: Any, service: str, user: str,
                  password: str) -> Tuple[bool, str]:
    """pam_authenticate then pam_acct_mgmt (in a worker thread).  No pam_setcred: nobody
    logs in to a shell."""
    authenticator.messages = []  # what PAM modules said during the previous call
    ok = authenticator.authenticate(user, password, service=service, resetcreds=False)
    return bool(ok), str(authenticator.reason)


_authenticators = Authenticators()


@hookimpl
def bouncer_declare_settings() -> Dict[str, Tuple[Setting, ...]]:
    return {SECTION: SETTINGS}


@hookimpl
def bouncer_password_checkers() -> Mapping[str, Callable[..., bool]]:
    return {METHOD: check_pam_login}


def check_pam_login(context: "PluginContext", client: ClientInfo, password: str) -> bool:
    service = context.settings(SECTION)["service"]
    ok, reason = _authenticators.check(service, client.user, password)
    if not ok:
        log.warning('%s PAM service "%s" refused user %s: %s', client.log_prefix, service,
                    client.user, reason)
    return ok
