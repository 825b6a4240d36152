"""Built-in auth: ``auth_type`` as the method, and auth_file (userlist.txt) as the first
credentials backend.  Registered last, so its answers come after any plugin's."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from bouncer.auth.store import SOURCE_DATABASE, Credentials
from bouncer.plugin import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App

#: auth_type values that name the method itself: the core's exchanges, and ldap and pam, which a
#: plugin checks (bouncer_password_checkers, or bouncer_verify_client).
_DIRECT_METHODS = {"trust", "any", "plain", "md5", "scram-sha-256", "cert", "peer", "ldap", "pam"}


@hookimpl(trylast=True)
def bouncer_auth_method(app: "App") -> Optional[str]:
    auth_type = app.config.auth_type
    if auth_type in _DIRECT_METHODS:
        return auth_type
    return None  # hba and others are decided by their own plugins


@hookimpl(tryfirst=True)
def bouncer_get_credentials(app: "App", user: str, database: str) -> Optional[Credentials]:
    """The userlist answers first; a database's forced user/password next."""
    found = app.user_store.from_userlist(user)
    if found is not None:
        return found
    definition = app.config.databases.get(database)
    if definition is not None and definition.user == user and definition.password:
        return Credentials(user, definition.password, SOURCE_DATABASE)
    return None
