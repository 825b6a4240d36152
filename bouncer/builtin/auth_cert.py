"""Built-in ``cert`` and ``peer`` verification (the :func:`bouncer_verify_client` hook).

``cert``: the common name of the client's TLS certificate (verified against
``client_tls_ca_file``) is its system user name.  ``peer``: the account
name of the unix-socket peer's uid (SO_PEERCRED) is.  That system user must equal the database
user, or be allowed by the pg_ident.conf map an HBA line names with ``map=`` (the HBA plugin
records it with :func:`remember_usermap`).  Refusals use PostgreSQL's words, down to the
capital of "Peer authentication failed"; the log says why.
"""
from __future__ import annotations

import pwd
from typing import TYPE_CHECKING, NamedTuple, Optional
from weakref import WeakKeyDictionary

import gevent

from bouncer.auth.ident import IdentMap
from bouncer.errors import AuthFailed
from bouncer.net import certs
from bouncer.net.tls import peer_certificate_problem
from bouncer.plugin import hookimpl
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.session.client import ClientSession


class UserMap(NamedTuple):
    """A ``map=`` option: which map of which pg_ident.conf applies to one login."""

    ident: IdentMap
    name: str


#: The map chosen for a client by its HBA line; gone with the client.
_usermaps: "WeakKeyDictionary[ClientSession, UserMap]" = WeakKeyDictionary()


def remember_usermap(client: "ClientSession", usermap: UserMap) -> None:
    """Record that *client*'s system user must be mapped through *usermap*."""
    _usermaps[client] = usermap


@hookimpl
def bouncer_verify_client(session: "ClientSession", method: str) -> Optional[bool]:
    if method == "cert":
        return _verify_cert(session)
    if method == "peer":
        return _verify_peer(session)
    return None


def certificate_user(client: "ClientSession") -> Optional[str]:
    """The common name of the client's certificate (``None`` when it has none).

    :raises AuthFailed: the client presented no certificate, or one that does not verify.
    """
    if not client.peer_cert:
        raise _refused("connection requires a valid client certificate",
                       "the client presented no certificate")
    # The TLS policy plugin judges the certificate before authentication; judging it again
    # here keeps certificate checks closed even when that plugin is disabled or replaced.
    rejection = peer_certificate_problem(client.sock)
    if rejection is not None:
        raise _refused("connection requires a valid client certificate",
                       f"certificate {rejection.subject} is {rejection.reason}: "
                       f"{rejection.detail}")
    return certs.common_name(client.peer_cert)


def _verify_cert(client: "ClientSession") -> bool:
    common_name = certificate_user(client)
    if common_name is None:
        raise _refused(f'certificate authentication failed for user "{client.user}"',
                       "cert: the certificate has no common name")
    _check_identity(client, common_name, "certificate authentication", "certificate CN")
    return True


def _verify_peer(client: "ClientSession") -> bool:
    if not client.unix or client.peer_uid is None:
        raise _refused(f'Peer authentication failed for user "{client.user}"',
                       "peer: only unix-socket connections have a peer user")
    system_user = _account_name(client.peer_uid)
    if system_user is None:
        raise _refused(f'Peer authentication failed for user "{client.user}"',
                       f"peer: could not look up local user ID {client.peer_uid}")
    _check_identity(client, system_user, "Peer authentication", "peer user")
    return True


def _account_name(uid: int) -> Optional[str]:
    # The passwd lookup may go to NSS (LDAP, sssd) and block the thread: run it in the pool.
    try:
        return gevent.get_hub().threadpool.apply(pwd.getpwuid, (uid,)).pw_name
    except KeyError:
        return None


def _check_identity(client: "ClientSession", system_user: str, method: str, what: str) -> None:
    usermap = _usermaps.get(client)
    if usermap is None:
        if system_user == client.user:
            return
        reason = f'{what} "{system_user}" is not user "{client.user}"'
    else:
        if usermap.ident.allows(usermap.name, system_user, client.user):
            return
        reason = (f'no match in usermap "{usermap.name}" for user "{client.user}" '
                  f'authenticated as "{system_user}"')
    raise _refused(f'{method} failed for user "{client.user}"', reason)


def _refused(message: str, log_reason: str) -> AuthFailed:
    return AuthFailed(message, sqlstate.INVALID_AUTHORIZATION, log_reason=log_reason)
