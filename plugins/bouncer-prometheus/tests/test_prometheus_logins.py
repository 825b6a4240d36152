"""Login failure reasons, as bouncer's authentication code words them, get their label."""
from __future__ import annotations

import pytest

from bouncer_prometheus.logins import REASONS, failure_reason


@pytest.mark.parametrize("reason, label", [
    ("no such user: alice", "unknown_user"),
    ("no such user: bob (trust needs a known user)", "unknown_user"),
    ("no such user or no SCRAM-capable secret: carol", "unknown_user"),
    ("wrong password (md5)", "wrong_password"),
    ("wrong password (SCRAM)", "wrong_password"),
    ("wrong password (cleartext)", "wrong_password"),
    ("no matching line in auth_hba_file", "rejected"),
    ("auth_hba_file line 7 rejects the connection", "rejected"),
    ("auth method reject", "rejected"),
    ("auth method None", "rejected"),
    ("user eve is in neither admin_users nor stats_users", "rejected"),
    ("the client presented no certificate", "certificate"),
    ("certificate CN=x is expired: since yesterday", "certificate"),
    ('certificate CN "bob" is not user "alice"', "certificate"),
    ('peer user "bob" is not user "alice"', "identity_mismatch"),
    ('no match in usermap "m" for user "a" authenticated as "b"', "identity_mismatch"),
    ("auth_query failed: connection refused", "auth_query"),
    ("authentication failed (plugin error)", "plugin_error"),
    ("token authentication failed", "method_failed"),
    ("expected password response, got message type 'Q'", "other"),
])
def test_each_reason_bouncer_logs_gets_its_label(reason: str, label: str) -> None:
    assert failure_reason(reason) == label


def test_labels_are_a_small_fixed_set() -> None:
    assert len(set(REASONS)) == len(REASONS) <= 10
    assert failure_reason("user alice@evil: anything at all") in REASONS
