"""Testing bouncer and its plugins against a real PostgreSQL (a pytest plugin).

``pytest_plugins = ["bouncer.testing.fixtures"]`` in a ``conftest.py`` gives the ``pg`` and
``bouncer_factory`` fixtures (see :mod:`bouncer.testing.fixtures`).  The pieces they use work
on their own too: :mod:`~bouncer.testing.pgcluster` (an ``initdb`` cluster under a temp dir),
:mod:`~bouncer.testing.process` (a bouncer subprocess with a real ini),
:mod:`~bouncer.testing.ini` (an ini in front of the cluster) and
:mod:`~bouncer.testing.ports`.  Nothing in bouncer itself imports this package; it needs the
test extra (pytest, psycopg2).
"""
