"""A plugin implementing every hook, for tests/functional/test_plugins.py.

Loaded with ``plugins = tests.plugins.recorder``.  Each call is appended as one JSON line to
the file named by ``$BOUNCER_TEST_RECORDER`` (nothing is written when it is unset), so a test
reads what bouncer called, with which arguments, in which order.  Its decisions are keyed by
names no real client uses:

* user ``rec_not_admitted``: refused by :func:`bouncer_client_admit`;
* user ``rec_tls_only`` over plaintext: refused by :func:`bouncer_check_client_tls`;
* user ``rec_raises``: :func:`bouncer_auth_method` raises (bouncer must fail closed);
* ``application_name`` ``token:...``: method ``token``, which :func:`bouncer_verify_client`
  accepts only for ``token:open-sesame`` (and refuses in its own words for ``token:expired``);
* ``application_name`` ``recpw``: method ``recpw``, whose :func:`bouncer_password_checkers`
  checker accepts md5user's password and raises for ``raise-me``;
* user ``trustuser``: :func:`bouncer_get_credentials` answers with password ``robot-pw``;
* database ``rec_limited``: :func:`bouncer_server_connect_limit` never allows a server;
* a file ``$BOUNCER_TEST_RECORDER.refuse``: :func:`bouncer_validate_config` reports its text.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional

from bouncer.admin.commands import Result, columns, show, stats_allowed
from bouncer.plugin import ClientInfo, Credentials, Refusal, hookimpl
from bouncer.plugin.context import PluginContext

RECORD_ENV = "BOUNCER_TEST_RECORDER"
TOKEN_METHOD = "token"
TOKEN_PREFIX = "token:"
GOOD_TOKEN, EXPIRED_TOKEN = "token:open-sesame", "token:expired"
TLS_DETAIL, TLS_HINT = "recorder: user rec_tls_only is TLS-only", "connect with sslmode=require"
ROBOT_USER, ROBOT_PASSWORD = "trustuser", "robot-pw"
PASSWORD_METHOD, PASSWORD_ACCEPTED, PASSWORD_RAISES = "recpw", "md5pass", "raise-me"
LIMITED_DATABASE = "rec_limited"
LIMIT_NAME = "recorder limit"


def _record(hook: str, **facts: Any) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"hook": hook, **facts}) + "\n")


def _client_facts(client: ClientInfo) -> Dict[str, Any]:
    # isinstance: the stable ClientInfo, never bouncer's live session object.
    assert isinstance(client, ClientInfo), type(client)
    return {"user": client.user, "database": client.database, "tls": bool(client.tls)}


def recorded(path: str) -> List[Dict[str, Any]]:
    """Every record written so far (for the tests)."""
    try:
        with open(path, encoding="utf-8") as records:
            return [json.loads(line) for line in records]
    except FileNotFoundError:
        return []


# -- process and configuration -----------------------------------------------------------------

@hookimpl
def bouncer_validate_config(config: Any) -> List[str]:
    _record("validate_config", path=config.path)
    refuse_flag = os.environ.get(RECORD_ENV, "") + ".refuse"
    if os.path.exists(refuse_flag):
        with open(refuse_flag, encoding="utf-8") as reason:
            return [reason.read().strip()]
    return []


@hookimpl
def bouncer_startup(context: PluginContext) -> None:
    _record("startup", listen_port=context.config.listen_port)


@hookimpl
def bouncer_reload(context: PluginContext, old_config: Any, new_config: Any) -> None:
    _record("reload", in_force=context.config is new_config,
            old_pool_size=old_config.default_pool_size,
            new_pool_size=new_config.default_pool_size)


@hookimpl
def bouncer_shutdown(app: Any) -> None:
    _record("shutdown")


# -- TLS ------------------------------------------------------------------------------------

@hookimpl
def bouncer_client_tls_context(app: Any, config: Any) -> None:
    _record("client_tls_context", sslmode=config.client_tls_sslmode)
    return None  # the built-in TLS policy builds it


@hookimpl
def bouncer_server_tls_context(app: Any, config: Any) -> None:
    _record("server_tls_context", sslmode=config.server_tls_sslmode)
    return None


@hookimpl
def bouncer_check_client_tls(context: PluginContext, client: ClientInfo) -> None:
    _record("check_client_tls", **_client_facts(client))
    if client.user == "rec_tls_only" and not client.tls:
        raise Refusal("recorder: this user must use TLS", detail=TLS_DETAIL, hint=TLS_HINT)


# -- login ------------------------------------------------------------------------------------

@hookimpl
def bouncer_client_admit(context: PluginContext, client: ClientInfo) -> None:
    _record("client_admit", **_client_facts(client))
    if client.user == "rec_not_admitted":
        raise Refusal("recorder: not admitted", "53300")


@hookimpl
def bouncer_auth_method(context: PluginContext, client: ClientInfo) -> Optional[str]:
    _record("auth_method", **_client_facts(client))
    if client.user == "rec_raises":
        raise RuntimeError("recorder bug in bouncer_auth_method")
    if client.application_name.startswith(TOKEN_PREFIX):
        return TOKEN_METHOD
    if client.application_name == PASSWORD_METHOD:
        return PASSWORD_METHOD
    return None


def _check_password(context: PluginContext, client: ClientInfo, password: str) -> bool:
    _record("password_check", **_client_facts(client))
    if password == PASSWORD_RAISES:
        raise RuntimeError("recorder bug in its password checker")
    return password == PASSWORD_ACCEPTED


@hookimpl
def bouncer_password_checkers() -> Dict[str, Callable[..., bool]]:
    _record("password_checkers")
    return {PASSWORD_METHOD: _check_password}


@hookimpl
def bouncer_get_credentials(context: PluginContext, user: str,
                            database: str) -> Optional[Credentials]:
    _record("get_credentials", user=user, database=database)
    if user == ROBOT_USER:
        return Credentials(user, ROBOT_PASSWORD, "recorder")
    return None


@hookimpl
def bouncer_verify_client(context: PluginContext, client: ClientInfo,
                          method: str) -> Optional[bool]:
    _record("verify_client", method=method, **_client_facts(client))
    if method != TOKEN_METHOD:
        return None
    if client.application_name == GOOD_TOKEN:
        return True
    if client.application_name == EXPIRED_TOKEN:
        raise Refusal("recorder: token expired", hint="ask for a new token")
    return False  # bouncer's own words


@hookimpl
def bouncer_client_login(client: ClientInfo, ok: bool, reason: str) -> None:
    _record("client_login", ok=ok, reason=reason, **_client_facts(client))


# -- limits and admin ---------------------------------------------------------------------------

@hookimpl
def bouncer_server_connect_limit(context: PluginContext, database: str, user: str) -> None:
    _record("server_connect_limit", database=database, user=user)
    if database == LIMITED_DATABASE:
        raise Refusal(LIMIT_NAME)


@stats_allowed
def _show_recorder(console: Any, args: str) -> Result:
    path = os.environ.get(RECORD_ENV, "")
    hooks = sorted({record["hook"] for record in recorded(path)})
    return show(columns("s", "hook"), [(hook,) for hook in hooks])


@hookimpl
def bouncer_admin_commands(context: Optional[PluginContext]) -> Dict[str, Callable[..., Any]]:
    _record("admin_commands")
    return {"SHOW RECORDER": _show_recorder}
