"""What a valid configuration will do, in a few lines of words (``bouncer --check``).

Sans-IO: the facts that need files (how many users auth_file holds, the names in the pooler's
certificate) come in as :class:`Facts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from bouncer.config import Config, DatabaseDef

AUTODB = "*"

#: How a client proves who it is, by auth_type (hba, and auth types a plugin serves, apart).
_METHODS = {
    "trust": "no password is asked, but the user must be known",
    "any": "no password is asked, any user name is accepted",
    "plain": "clients send their password in cleartext",
    "md5": "clients answer an md5 challenge (SCRAM instead when the stored secret is SCRAM)",
    "scram-sha-256": "clients log in with SCRAM-SHA-256",
    "cert": "clients present a TLS certificate whose common name is the user name; no password",
    "ldap": "clients send their password in cleartext, an LDAP bind checks it (auth_ldap_options)",
    "pam": "clients send their password in cleartext, PAM checks it",
}

#: What a client's libpq must ask for, by client_tls_sslmode.
_CLIENT_SSLMODE = {
    "allow": "may connect with any sslmode (TLS is offered, plaintext accepted)",
    "prefer": "may connect with any sslmode (TLS is offered, plaintext accepted)",
    "require": "must connect with sslmode=require or stronger; no client certificate needed",
    "verify-ca": "must connect with sslmode=require or stronger and present a certificate "
                 "signed by {ca}",
    "verify-full": "must connect with sslmode=require or stronger and present a certificate "
                   "signed by {ca} whose common name is the user name (or that the map= of "
                   "its cert line in auth_hba_file maps to it)",
}

#: What a server must present, by server_tls_sslmode.
_SERVER_SSLMODE = {
    "allow": "TLS when a server offers it, plaintext otherwise; certificates are not checked",
    "prefer": "TLS when a server offers it, plaintext otherwise; certificates are not checked",
    "require": "each must offer TLS; its certificate is not checked (verify-full would check "
               "it)",
    "verify-ca": "each must offer TLS and present a certificate signed by {ca}; the host name "
                 "is not checked",
    "verify-full": "each must offer TLS and present a certificate signed by {ca} and valid for "
                   "the host= name of its [databases] line",
}


@dataclass(frozen=True)
class Facts:
    """What the summary needs from outside the configuration.

    :param auth_file_users: how many users auth_file lists (``None``: no auth_file).
    :param credential_plugins: plugins other than the built-in ones that answer
        ``bouncer_get_credentials``, in the order they are asked.
    :param certificate_names: the DNS names and addresses in ``client_tls_cert_file``.
    """

    auth_file_users: Optional[int] = None
    credential_plugins: Sequence[str] = ()
    certificate_names: Sequence[str] = ()


def describe(config: Config, facts: Facts = Facts()) -> List[str]:
    """The summary, one line per listener group, database, the auth chain and each TLS side."""
    return [_listen(config),
            *(_database(config, definition) for definition in _databases(config)),
            _auth(config, facts), _console(config), _client_tls(config, facts),
            _server_tls(config)]


def _listen(config: Config) -> str:
    addresses = [addr.strip() for addr in config.listen_addr if addr.strip()]
    places = [("every address" if addr == "*" else addr) + f" port {config.listen_port}"
              for addr in addresses]
    if config.unix_socket_dir:
        places.append(f"unix socket {config.unix_socket_dir}/.s.PGSQL.{config.listen_port}")
    return "listen: " + (", ".join(places) or "nowhere (no listen_addr, no unix_socket_dir)")


def _databases(config: Config) -> List[DatabaseDef]:
    # The * entry last: it serves the names the others do not.
    return sorted(config.databases.values(), key=lambda d: (d.name == AUTODB, d.name))


def _database(config: Config, definition: DatabaseDef) -> str:
    if definition.name == AUTODB:
        name, dbname = "* (any other name a client asks for)", "the name asked for"
    else:
        name, dbname = definition.name, definition.dbname or definition.name
    where = (",".join(definition.host) if definition.host
             else f"unix socket in {config.unix_socket_dir or '/tmp'}")
    mode = definition.pool_mode or config.pool_mode
    size = definition.pool_size if definition.pool_size is not None else config.default_pool_size
    parts = [f"{where} port {definition.port}, dbname {dbname}", f"{mode} pooling",
             f"pool_size {size}"]
    if definition.user:
        parts.append(f"every login as user {definition.user}")
    return f"database {name}: " + ", ".join(parts)


def _auth(config: Config, facts: Facts) -> str:
    auth_type = config.auth_type
    if auth_type == "hba":
        method = f"the first matching line of auth_hba_file {config.auth_hba_file} decides"
    else:
        method = _METHODS.get(auth_type, "a plugin's bouncer_verify_client decides")
    sources = []
    if facts.auth_file_users is not None:
        count = facts.auth_file_users
        sources.append(f"auth_file {config.auth_file} ({count} user{'' if count == 1 else 's'})")
    sources += [f"plugin {name}" for name in facts.credential_plugins]
    if any(d.user and d.password for d in config.databases.values()):
        sources.append("the password= of a database's forced user")
    sources += _auth_query_sources(config)
    return (f"auth: auth_type = {auth_type}: {method}; secrets from "
            + (", then ".join(sources) or "nowhere (no auth_file, no auth_user)"))


def _auth_query_sources(config: Config) -> List[str]:
    """auth_query, globally and where a database names its own auth_user."""
    found = []
    if config.auth_user:
        where = config.auth_dbname or "the database the client asks for"
        found.append(f"auth_query as {config.auth_user} in {where}")
    for definition in _databases(config):
        if definition.auth_user and definition.auth_user != config.auth_user:
            where = definition.auth_dbname or config.auth_dbname or definition.name
            found.append(f"for database {definition.name}, auth_query as "
                         f"{definition.auth_user} in {where}")
    return found


def _console(config: Config) -> str:
    admins = ", ".join(config.admin_users) or "none"
    stats = ", ".join(config.stats_users) or "none"
    local = ("; and user pgbouncer over the unix socket from bouncer's own account"
             if config.unix_socket_dir else "")
    return f"console: database pgbouncer; admin_users = {admins}; stats_users = {stats}{local}"


def _client_tls(config: Config, facts: Facts) -> str:
    mode = config.client_tls_sslmode
    if mode == "disable":
        return ("clients: TLS is off (client_tls_sslmode = disable): they must connect with "
                "sslmode=disable, allow or prefer")
    wants = _CLIENT_SSLMODE[mode].format(ca=config.client_tls_ca_file)
    names = (f" and connect by one of its names ({', '.join(facts.certificate_names)})"
             if facts.certificate_names else "")
    return (f"clients: {wants}; to verify this pooler they need sslrootcert = the CA that "
            f"signed {config.client_tls_cert_file}{names} (sslmode=verify-full)")


def _server_tls(config: Config) -> str:
    mode = config.server_tls_sslmode
    if mode == "disable":
        return "servers: plaintext (server_tls_sslmode = disable)"
    ca = config.server_tls_ca_file or "a CA the system trusts"
    text = f"servers: {_SERVER_SSLMODE[mode].format(ca=ca)}"
    if config.server_tls_cert_file:
        text += f"; bouncer presents {config.server_tls_cert_file} to them"
    return text
