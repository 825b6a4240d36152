"""An example bouncer plugin: a credentials backend reading ``user:secret`` lines from a file.

The file is named by the setting ``secrets_file`` of the plugin's own ini section::

    [plugin.example_auth]
    secrets_file = /etc/bouncer/example-secrets

Without it the plugin answers nothing, so installing it changes nothing until it is
configured.  The secret (everything after the first colon) may be a plain password, an
``md5...`` secret or a ``SCRAM-SHA-256$...`` secret; blank lines and lines starting with ``#``
are ignored.

It imports nothing of bouncer but :mod:`bouncer.plugin` (and :mod:`bouncer.plugin.context`
for a type), the stable plugin API, and shows the four things most auth backends need:

* ``bouncer_declare_settings`` declares the plugin's settings: bouncer types them, refuses an
  unknown key or a bad value (``bouncer --check`` too), applies a RELOAD and shows them in
  SHOW CONFIG (``plugin.example_auth.secrets_file``);
* ``bouncer_get_credentials`` answers ``None`` for users it does not know, so the next backend
  (auth_query) is asked;
* blocking work (reading a file; for a real backend, a call into a C library) runs in gevent's
  threadpool, so other clients are not held up;
* ``bouncer_validate_config`` refuses a configuration the plugin could not serve, at start and
  on RELOAD, instead of failing at the first login.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import gevent

from bouncer.plugin import Credentials, Setting, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config
    from bouncer.plugin.context import PluginContext

#: The ini section is [plugin.example_auth]; also the credentials' source in bouncer's logs.
SECTION = SOURCE = "example_auth"
SETTINGS = (
    Setting("secrets_file", "str", "", True,
            "file of user:secret lines (empty: the plugin answers nothing)"),
)


def parse_secrets(text: str) -> Dict[str, str]:
    """``user:secret`` lines to a mapping; the first colon separates, the secret may hold more."""
    secrets = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, secret = line.partition(":")
        if colon and user:
            secrets[user] = secret
    return secrets


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as secrets:
        return secrets.read()


def read_secrets(path: str) -> Dict[str, str]:
    """The file's secrets, read in the threadpool (file I/O would block every greenlet)."""
    return parse_secrets(gevent.get_hub().threadpool.apply(_read, (path,)))


def secrets_file(config: "Config") -> str:
    return config.plugin(SECTION)["secrets_file"]


@hookimpl
def bouncer_declare_settings() -> Dict[str, Tuple[Setting, ...]]:
    return {SECTION: SETTINGS}


@hookimpl
def bouncer_validate_config(config: "Config") -> List[str]:
    path = secrets_file(config)
    if path and not os.access(path, os.R_OK):
        return [f"plugin.{SECTION}.secrets_file names {path}, which cannot be read"]
    return []


@hookimpl
def bouncer_get_credentials(context: "PluginContext", user: str,
                            database: str) -> Optional[Credentials]:
    # Read from the configuration in force at each login, so a RELOAD counts at once.
    path = secrets_file(context.config)
    if not path:
        return None  # not configured: not mine
    secret = read_secrets(path).get(user)
    if secret is None:
        return None  # unknown here: the next backend is asked
    return Credentials(user, secret or None, SOURCE)
