"""Login failures by reason: bouncer's log reasons sorted into a few stable label values.

The ``bouncer_client_login`` hook reports a failure with the sentence bouncer logs (it names
users, lines and methods); a label needs a small fixed set, so each reason is matched against
the wordings bouncer's authentication code uses, and anything else counts as ``other``.
"""
from __future__ import annotations

from typing import Tuple

#: (label, words one of which the reason contains), tried in order: the first match wins.
_CLASSES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("plugin_error", ("(plugin error)",)),
    ("unknown_user", ("no such user",)),
    ("wrong_password", ("wrong password",)),
    ("rejected", ("auth_hba_file", "auth method reject", "auth method None",
                  "neither admin_users nor stats_users")),
    ("certificate", ("certificate",)),
    ("identity_mismatch", ("is not user", "no match in usermap")),
    ("auth_query", ("auth_query failed",)),
    ("method_failed", ("authentication failed",)),
)

#: Every label value :func:`failure_reason` can return.
REASONS = tuple(label for label, _ in _CLASSES) + ("other",)


def failure_reason(reason: str) -> str:
    """The label value for a login failure logged as *reason*."""
    for label, words in _CLASSES:
        if any(word in reason for word in words):
            return label
    return "other"
