"""Registers the fixture modules: fixtures live in tests/fixtures, plain helpers in tests/support."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.bouncer",
    "tests.fixtures.certs",
]
