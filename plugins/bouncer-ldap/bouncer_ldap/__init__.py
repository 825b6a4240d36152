"""LDAP authentication for bouncer: PgBouncer's ``auth_type = ldap`` and the ``ldap`` method of
``auth_hba_file``, with PostgreSQL's option syntax (``ldapserver``, ``ldapprefix``,
``ldapbasedn``, ``ldapurl``...), on ldap3.

The hooks are in :mod:`bouncer_ldap.plugin` (the entry point); the option parser, sans-IO, in
:mod:`~bouncer_ldap.options`; the binds against the directory in :mod:`~bouncer_ldap.bind`.
"""

__version__ = "0.1.0"
