"""The hooks: ``auth_type = ldap`` with ``auth_ldap_options``, and ``ldap`` lines of
``auth_hba_file`` with their own ``ldap*`` options, checked by an LDAP bind.

Settings, in ``[plugin.ldap]`` (all reloadable)::

    timeout = 10            ; bounds each LDAP login check, connect and binds included
    tls_verify = ldap.conf  ; ldaps and ldaptls=1: check the server's certificate (1, 0, or
                            ; as ldap.conf's TLS_REQCERT says, as PgBouncer's libldap does)
    tls_ca_file =           ; CA certificates for that check (empty: ldap.conf's TLS_CACERT,
                            ; else the system's)
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Tuple

import gevent

from bouncer.plugin import ClientInfo, Setting, hookimpl
from bouncer.plugin.context import hba_lines

from bouncer_ldap.bind import TlsPolicy, check_password
from bouncer_ldap.ldapconf import ca_file as ldap_ca_file
from bouncer_ldap.ldapconf import ldap_conf_path, read_ldap_conf, verifies
from bouncer_ldap.options import LdapOptionError, LdapOptions, ldap_options, options_from_string

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config
    from bouncer.plugin.context import PluginContext

log = logging.getLogger("bouncer.plugins.ldap")  # under bouncer's own logger

SECTION = METHOD = "ldap"
SETTINGS = (
    Setting("timeout", "time", 10.0, True, "longest an LDAP login check may take", min=0.1),
    Setting("tls_verify", "enum", "ldap.conf", True,
            "check the LDAP server's certificate (ldaps, ldaptls=1): 1, 0, or as ldap.conf's "
            "TLS_REQCERT says", choices=("ldap.conf", "1", "0")),
    Setting("tls_ca_file", "str", "", True,
            "CA certificates for that check (empty: ldap.conf's TLS_CACERT, else the system's)"),
)


@hookimpl
def bouncer_declare_settings() -> Dict[str, Tuple[Setting, ...]]:
    return {SECTION: SETTINGS}


@hookimpl
def bouncer_validate_config(config: "Config") -> List[str]:
    """The options are checked before they are used: at start, RELOAD and --check."""
    if config.auth_type == "ldap":
        return _option_problems(config.auth_ldap_options)
    if config.auth_type == "hba" and config.auth_hba_file:
        return _hba_problems(config)
    return []


def _option_problems(text: str) -> List[str]:
    if not text:
        return ["auth_ldap_options is not set: auth_type = ldap needs it (PgBouncer refuses "
                "every login: auth_ldap_options is null)"]
    try:
        options_from_string(text)
    except LdapOptionError as exc:
        return [f"auth_ldap_options: {exc}"]
    return []


def _hba_problems(config: "Config") -> List[str]:
    problems = []
    for rule in hba_lines(config):
        if rule.method == METHOD:
            try:
                ldap_options(rule.options.items())
            except LdapOptionError as exc:
                problems.append(f"{config.auth_hba_file}:{rule.lineno}: {exc}")
    return problems


@hookimpl
def bouncer_password_checkers() -> Mapping[str, Callable[..., bool]]:
    return {METHOD: check_ldap_login}


def check_ldap_login(context: "PluginContext", client: ClientInfo, password: str) -> bool:
    """The client's password, checked by a bind; the warnings say why not, in PgBouncer's
    words.  Bounded by ``timeout``: an LDAP server that never answers refuses the login."""
    settings = context.settings(SECTION)
    options = client_options(context, client)
    if options is None:
        return False
    # Plain LDAP never looks at it: ldap.conf is read only for ldaps and StartTLS.
    tls = tls_policy(settings["tls_verify"], settings["tls_ca_file"]) if options.uses_tls \
        else TlsPolicy(True, "")
    timeout = settings["timeout"]
    # gevent.Timeout is a BaseException: caught by name, so nothing else is swallowed.
    try:
        with gevent.Timeout(timeout):
            warnings = check_password(options, client.user, password, timeout, tls)
    except gevent.Timeout:
        warnings = [f"LDAP login for user {client.user} on server {options.describe()} took "
                    f"longer than plugin.ldap.timeout ({timeout:g}s)"]
    for warning in warnings:
        log.warning("%s %s", client.log_prefix, warning)
    return not warnings


def tls_policy(verify: str, ca_file: str) -> TlsPolicy:
    """The settings, completed from ldap.conf where they leave it to it."""
    if verify != "ldap.conf" and ca_file:
        return TlsPolicy(verify == "1", ca_file)
    # A few lines of a local file, read at each login that needs it (so an edit counts at once,
    # as libldap's would at the next start); the threadpool keeps other clients going.
    conf = gevent.get_hub().threadpool.apply(read_ldap_conf, (ldap_conf_path(),))
    return TlsPolicy(verifies(conf) if verify == "ldap.conf" else verify == "1",
                     ca_file or ldap_ca_file(conf))


def client_options(context: "PluginContext", client: ClientInfo) -> Optional[LdapOptions]:
    """auth_ldap_options, or the options of the client's ``ldap`` HBA line.  Validation
    checked both before they came into force: a refusal here would be a bug, and fails
    closed."""
    rule = context.hba_line(client)
    try:
        if rule is not None and rule.method == METHOD:
            return ldap_options(rule.options.items())
        return options_from_string(context.config.auth_ldap_options)
    except LdapOptionError as exc:
        log.warning("%s LDAP options cannot be used: %s", client.log_prefix, exc)
        return None
