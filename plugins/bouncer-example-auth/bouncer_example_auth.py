"""An example bouncer plugin: a credentials backend reading ``user:secret`` lines from a file.

The file is named by the environment variable ``BOUNCER_EXAMPLE_AUTH_FILE``; without it the
plugin answers nothing, so installing it changes nothing until it is configured.  The secret
(everything after the first colon) may be a plain password, an ``md5...`` secret or a
``SCRAM-SHA-256$...`` secret; blank lines and lines starting with ``#`` are ignored.

It shows the three things most auth backends need:

* ``bouncer_get_credentials`` answers ``None`` for users it does not know, so the next backend
  (auth_query) is asked;
* blocking work (reading a file; for a real backend, a call into a C library) runs in gevent's
  threadpool, so other clients are not held up;
* ``bouncer_validate_config`` refuses a configuration the plugin could not serve, at start and
  on RELOAD, instead of failing at the first login.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import gevent

from bouncer.auth.store import Credentials
from bouncer.plugin import hookimpl

FILE_ENV = "BOUNCER_EXAMPLE_AUTH_FILE"
#: Shown as the credentials' source in bouncer's logs.
SOURCE = "example_auth"


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


@hookimpl
def bouncer_validate_config(config: Any) -> List[str]:
    path = os.environ.get(FILE_ENV)
    if path and not os.access(path, os.R_OK):
        return [f"{FILE_ENV} names {path}, which cannot be read"]
    return []


@hookimpl
def bouncer_get_credentials(app: Any, user: str, database: str) -> Optional[Credentials]:
    path = os.environ.get(FILE_ENV)
    if not path:
        return None  # not configured: not mine
    secret = read_secrets(path).get(user)
    if secret is None:
        return None  # unknown here: the next backend is asked
    return Credentials(user, secret or None, SOURCE)
