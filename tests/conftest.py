"""Registers the fixture modules (tests/fixtures); plain helpers live in tests/support."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.bouncer",
    "tests.fixtures.certs",
]
