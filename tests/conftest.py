"""Registers the fixtures: bouncer's own (bouncer.testing, as plugin authors use them) and the
suite's test PKI (tests/fixtures); plain helpers live in tests/support."""

pytest_plugins = [
    "bouncer.testing.fixtures",
    "tests.fixtures.certs",
    "tests.fixtures.ldap",
]
