"""Built-in ``auth_type = hba``: the method comes from the first matching line of
``auth_hba_file`` (pg_hba.conf format), with ``map=`` names resolved in ``auth_ident_file``.

The files are parsed when a configuration is validated (start, RELOAD, ``--check``), so a
broken file refuses the whole configuration, and the rules in force are kept in memory per App:
a RELOAD that fails keeps the old rules, and a file edited without a RELOAD changes nothing.
Refusals use PostgreSQL's words (SQLSTATE 28000).
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional
from weakref import WeakKeyDictionary

from bouncer.auth.hba import HbaRule, HbaRules, load_hba, no_entry_message, reject_message
from bouncer.auth.ident import IdentMap, load_ident
from bouncer.builtin.auth_cert import UserMap, certificate_user, remember_usermap
from bouncer.errors import AuthFailed, ConfigError
from bouncer.plugin import hookimpl
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.plugin import ClientInfo
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

#: HBA method names that the core spells differently.
_CORE_METHOD = {"password": "plain"}


@dataclass(frozen=True)
class HbaPolicy:
    """The parsed HBA file and, when configured, the ident map file."""

    rules: HbaRules
    ident: Optional[IdentMap]


#: The policy each running App uses, replaced only by a configuration that loaded cleanly.
_policies: "WeakKeyDictionary[App, HbaPolicy]" = WeakKeyDictionary()


def load_policy(config: "Config") -> HbaPolicy:
    """Parse ``auth_hba_file`` and, when set, ``auth_ident_file``.

    :raises ConfigError: a file cannot be read or is invalid, or a ``map=`` names a map that
        ``auth_ident_file`` does not define (naming the HBA file and line).
    """
    rules = load_hba(config.auth_hba_file)
    ident = load_ident(config.auth_ident_file) if config.auth_ident_file else None
    for rule in rules.rules:
        _check_map(rule, ident, config.auth_hba_file)
    return HbaPolicy(rules, ident)


def _check_map(rule: HbaRule, ident: Optional[IdentMap], filename: str) -> None:
    mapname = rule.options.get("map")
    if mapname is None or (ident is not None and ident.has_map(mapname)):
        return
    where = "auth_ident_file is not set" if ident is None else "auth_ident_file does not define it"
    raise ConfigError(f'map "{mapname}" is used but {where}', filename=filename,
                      lineno=rule.lineno)


# -- configuration lifecycle ---------------------------------------------------------------

@hookimpl
def bouncer_validate_config(config: "Config") -> List[str]:
    if config.auth_type != "hba":
        return []
    try:
        load_policy(config)
    except ConfigError as exc:
        return [str(exc)]
    return []


@hookimpl
def bouncer_startup(app: "App") -> None:
    if app.config.auth_type == "hba":
        _policy(app)  # now, so the rules are those of the file bouncer started with


@hookimpl
def bouncer_reload(app: "App", old_config: "Config", new_config: "Config") -> None:
    if new_config.auth_type != "hba":
        _policies.pop(app, None)
        return
    # Validation parsed the files a moment ago; reading them again can only fail if they
    # changed since, and then the rules in force stay.
    try:
        _policies[app] = load_policy(new_config)
    except ConfigError as exc:
        log.error("HBA rules not reloaded, keeping the old ones: %s", exc)


def _policy(app: "App") -> HbaPolicy:
    """The rules in force, loaded on first use when bouncer_startup did not run."""
    policy = _policies.get(app)
    if policy is None:
        policy = _policies[app] = load_policy(app.config)
    return policy


# -- login ---------------------------------------------------------------------------------

@hookimpl
def bouncer_auth_method(app: "App", client: "ClientInfo",
                        session: "ClientSession") -> Optional[str]:
    """The method of the first matching line; no line, or ``reject``, refuses the client."""
    if app.config.auth_type != "hba":
        return None
    policy = _policy(app)
    address = None if client.unix else ipaddress.ip_address(client.addr)
    tls = bool(client.tls)
    rule = _matching_rule(policy, client)
    physical = _physical_replication(client)
    if rule is None:
        raise _refused(no_entry_message(address, client.user, client.database, tls,
                                        replication=physical),
                       "no matching line in auth_hba_file")
    if rule.method == "reject":
        raise _refused(reject_message(address, client.user, client.database, tls,
                                      replication=physical),
                       f"auth_hba_file line {rule.lineno} rejects the connection")
    _check_clientcert(rule, session)
    mapname = rule.options.get("map")
    if mapname is not None and policy.ident is not None:
        remember_usermap(session, UserMap(policy.ident, mapname))
    return _CORE_METHOD.get(rule.method, rule.method)


def _matching_rule(policy: HbaPolicy, client: "ClientInfo") -> Optional[HbaRule]:
    address = None if client.unix else ipaddress.ip_address(client.addr)
    return policy.rules.match(conn_type="local" if client.unix else "host", tls=bool(client.tls),
                              address=address, database=client.database, user=client.user,
                              replication=_physical_replication(client))


def _physical_replication(client: "ClientInfo") -> bool:
    """Only the ``replication`` keyword matches a physical replication connection."""
    return client.replication == "yes"


def rule_for(app: "App", client: "ClientInfo") -> Optional[HbaRule]:
    """The line of ``auth_hba_file`` that applies to *client* (``None`` without ``auth_type =
    hba`` or without a matching line): a plugin's method reads its options there, as
    bouncer-ldap reads an ``ldap`` line's ``ldap*`` options."""
    if app.config.auth_type != "hba":
        return None
    return _matching_rule(_policy(app), client)


def usermap_for(app: "App", client: "ClientInfo") -> Optional[UserMap]:
    """The ``map=`` of the HBA line that applies to *client*, when ``auth_type = hba``.

    The TLS policy asks this for ``client_tls_sslmode = verify-full``: a certificate whose CN
    the map allows for the user passes, as PostgreSQL's ``clientcert=verify-full`` does."""
    if app.config.auth_type != "hba":
        return None
    policy = _policy(app)
    rule = _matching_rule(policy, client)
    mapname = rule.options.get("map") if rule is not None else None
    if mapname is None or policy.ident is None:
        return None
    return UserMap(policy.ident, mapname)


def _check_clientcert(rule: HbaRule, session: "ClientSession") -> None:
    """``clientcert=`` on a password line: a verified certificate, and with ``verify-full``
    one whose common name is the user.  (``cert`` lines are checked by the cert method.)"""
    if rule.method == "cert" or rule.clientcert is None:
        return
    common_name = certificate_user(session)
    if rule.clientcert == "verify-full" and common_name != session.user:
        raise _refused(f'certificate validation (clientcert=verify-full) failed for user '
                       f'"{session.user}": CN mismatch',
                       f'certificate CN "{common_name}" is not user "{session.user}"')


def _refused(message: str, log_reason: str) -> AuthFailed:
    return AuthFailed(message, sqlstate.INVALID_AUTHORIZATION, log_reason=log_reason)
