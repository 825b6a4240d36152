"""The plugin's hooks without a PAM service: what it declares, and input PAM must never see."""
from __future__ import annotations

import bouncer_pam


def test_the_service_setting_defaults_to_pgbouncers() -> None:
    (setting,) = bouncer_pam.bouncer_declare_settings()["pam"]
    assert (setting.name, setting.default, setting.reloadable) == ("service", "pgbouncer", True)


def test_it_checks_the_pam_method_only() -> None:
    assert list(bouncer_pam.bouncer_password_checkers()) == ["pam"]


def test_a_nul_in_the_name_or_password_is_refused_before_pam() -> None:
    """C strings end at a NUL: "bob\\0x" would reach PAM as "bob"."""
    authenticators = bouncer_pam.Authenticators()
    assert authenticators.check("login", "bob\0x", "pw") == (
        False, "a NUL character in the user name or password")
    assert not authenticators.check("login", "bob", "pw\0")[0]
