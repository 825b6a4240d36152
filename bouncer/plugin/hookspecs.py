"""Every hook bouncer calls, with its contract.

Sections follow a connection's life: process and config, TLS policy, client login and
authentication, limits and assignment of server connections, admin console.  Hooks are called
only at those boundaries, never per packet.

Conventions (shared by all hooks):

* Hooks are called with keyword arguments, so an implementation may accept fewer arguments
  than the spec names (pluggy's opt-in arguments) and new arguments can be added later.
* Hooks are given ``context`` (:class:`bouncer.plugin.context.PluginContext`) and, when they
  are about a client, ``client`` (:class:`bouncer.plugin.ClientInfo`): the stable API.  They
  are also given ``app``, ``session`` or ``pool``, bouncer's own objects, for the built-in
  plugins; a plugin that takes those follows bouncer's insides from release to release.
* *Decision* hooks (``firstresult``) answer ``None`` for "not mine": the next implementation is
  asked.  Every one of them says no the same way: it raises :class:`bouncer.plugin.Refusal`
  (the client gets a ``FATAL`` with its message, SQLSTATE, detail and hint; for a TLS context
  the configuration is refused; for a server connection limit the message names the limit).
  They fail closed: if an implementation raises anything else, the client gets a ``FATAL`` with
  SQLSTATE 28000 and the error is logged; the daemon lives.
* *Observer* hooks return nothing; an exception in one is logged and ignored.
* "Called from" names the greenlet the hook runs in.  Hooks may block cooperatively (gevent I/O);
  code that blocks the whole thread (C libraries) should use ``gevent.get_hub().threadpool``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

import pluggy

from bouncer.plugin import NAME

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    import ssl

    from bouncer.app import App
    from bouncer.auth.store import Credentials
    from bouncer.config import Config, Setting
    from bouncer.plugin.client import ClientInfo
    from bouncer.plugin.context import PluginContext
    from bouncer.plugin.hooks import PasswordChecker
    from bouncer.pool.pool import Pool
    from bouncer.session.client import ClientSession

hookspec = pluggy.HookspecMarker(NAME)


# --------------------------------------------------------------------------------------------
# Process and configuration
# --------------------------------------------------------------------------------------------

@hookspec
def bouncer_declare_settings() -> Mapping[str, Sequence["Setting"]]:
    """Declare the settings a plugin reads from its own ``[plugin.NAME]`` section.

    Each setting is a :class:`bouncer.plugin.Setting`, the row type of bouncer's own settings
    table (name, kind, default, reloadable, doc, choices, min, max), so the section is read
    as ``[pgbouncer]`` is: values are typed and range-checked, a bad value or an unknown key is
    a problem naming file and line (``bouncer --check`` lists every one; start and RELOAD are
    refused), SHOW CONFIG has a row ``plugin.NAME.key`` for each setting, and a RELOAD puts new
    values in force (a setting declared with ``reloadable=False`` is logged as needing a
    restart).  Hooks read the values from the configuration they are given:
    ``config.plugin(NAME)[key]``; ``config.has_plugin_section(NAME)`` tells whether the file
    has the section at all (a plugin may take that as "enabled").

    :return: section name (``NAME``: a lower-case identifier) -> its settings.  The answers of
        all implementations are merged; a section declared by two plugins refuses the start.
        A ``[plugin.NAME]`` section that no loaded plugin declares is ignored with a warning.

    Called from: the main greenlet, each time the configuration file is read (start, RELOAD
    and ``bouncer --check``), before its values are typed.
    """


@hookspec
def bouncer_validate_config(config: "Config") -> List[str]:
    """Check a configuration before it is used.

    :param config: the fully parsed configuration (start, RELOAD, or ``bouncer --check``).
    :return: a list of problems, each a sentence naming the setting and what to do; an empty
        list when all is well.  All implementations are called and their lists concatenated.
        Any problem refuses the configuration: at start bouncer exits non-zero, on RELOAD the
        old configuration stays.

    Called from: the main greenlet at start, the reloading greenlet on SIGHUP/RELOAD.
    """


@hookspec
def bouncer_startup(app: "App", context: "PluginContext") -> None:
    """Observe that bouncer has loaded its configuration and is about to listen.

    :param app: the running application (all of it; its insides change with bouncer).
    :param context: the narrow, stable view: configuration, process state, SHOW tables
        (:class:`bouncer.plugin.context.PluginContext`); valid for the life of the process.

    Called from: the main greenlet, once.
    """


@hookspec
def bouncer_reload(app: "App", context: "PluginContext", old_config: "Config",
                   new_config: "Config") -> None:
    """Observe that a new configuration was accepted and applied (SIGHUP or RELOAD).

    :param app: the running application, already using ``new_config``.
    :param context: the narrow view, as for :func:`bouncer_startup`.
    :param old_config: the configuration in force before.
    :param new_config: the configuration now in force.

    Called from: the greenlet that performed the reload.
    """


@hookspec
def bouncer_shutdown(app: "App", context: "PluginContext") -> None:
    """Observe that bouncer is shutting down (after listeners closed, before exit).

    :param app: the running application.
    :param context: the narrow view, as for :func:`bouncer_startup`.

    Called from: the main greenlet.
    """


# --------------------------------------------------------------------------------------------
# TLS policy
# --------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def bouncer_client_tls_context(app: Optional["App"], config: "Config") -> Optional[Any]:
    """Build the TLS context offered to clients (``client_tls_*`` settings).

    :param app: the application (during start, before it listens); ``None`` under
        ``bouncer --check``, which builds the contexts to report what would stop them.
    :param config: the configuration being applied (at start, RELOAD or SET of a TLS
        setting).
    :return: an object with ``wrap_socket(sock, server_side=True)`` returning a socket-like
        object (a server-side :class:`ssl.SSLContext` will do; the built-in returns a
        pyOpenSSL-based context), or ``None`` when this implementation does not build it.
        If no implementation returns a context, clients' SSLRequests are answered ``N``.
        Raise :class:`~bouncer.plugin.Refusal` (bouncer's own policy raises its
        :class:`~bouncer.errors.ConfigError`, naming file and line) when TLS cannot be set up
        with *config*: at start bouncer exits; on RELOAD the reload is refused and on SET
        the value is kept, the running contexts staying in both cases.  This is where
        key/certificate files are best checked: SET changes a key and its certificate one
        after the other.

    Called from: the main greenlet at start, the reloading greenlet on RELOAD, the admin
    console's greenlet on SET of a ``*_tls_*`` setting.
    """


@hookspec(firstresult=True)
def bouncer_server_tls_context(app: Optional["App"],
                               config: "Config") -> Optional["ssl.SSLContext"]:
    """Build the TLS context used towards PostgreSQL servers (``server_tls_*`` settings).

    :param app: the application (``None`` under ``bouncer --check``).
    :param config: the configuration being applied.
    :return: a client-side :class:`ssl.SSLContext`, or ``None`` when this implementation does
        not build it; with no context at all, servers are never asked for TLS.  Raise
        :class:`~bouncer.plugin.Refusal` as for :func:`bouncer_client_tls_context`.  When
        the ``server_tls_*`` settings change, server connections are recycled.

    Called from: as :func:`bouncer_client_tls_context`.
    """


@hookspec(firstresult=True)
def bouncer_check_client_tls(context: "PluginContext", client: "ClientInfo", app: "App",
                             session: "ClientSession") -> None:
    """Decide whether a client's transport is acceptable, once its startup packet is read.

    Policies enforce ``client_tls_sslmode`` here: plaintext refused under ``require``, a missing
    or unacceptable client certificate under ``verify-ca``/``verify-full``.

    :param context: the narrow, stable view of the pooler.
    :param client: the client; ``client.tls`` is ``""`` for plaintext, and ``client.peer_cert``
        holds the DER certificate it presented (``None`` when it presented none).  The
        built-in policy (``trylast``) verifies that certificate; an implementation running
        before it sees it unverified.
    :param app: bouncer's application object (internals, for the built-in plugins).
    :param session: bouncer's live session of the client (internals, as *app*).
    :return: ``None``; raise :class:`~bouncer.plugin.Refusal` (a FATAL that says what to do)
        to refuse.

    Called from: the client's greenlet.
    """


# --------------------------------------------------------------------------------------------
# Client login and authentication
# --------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def bouncer_client_admit(context: "PluginContext", client: "ClientInfo", app: "App",
                         session: "ClientSession") -> None:
    """Decide whether a client that sent its startup packet may proceed to authentication.

    Limit enforcers use this for ``max_client_conn`` and the per-database and per-user client
    connection limits.

    :param context: the narrow view; *client* the client (user, database, address known);
        *app* and *session* as for :func:`bouncer_check_client_tls`.
    :return: ``None`` to admit; raise :class:`~bouncer.plugin.Refusal` to refuse (it is sent
        as an ErrorResponse and the connection closed).

    Called from: the client's greenlet.
    """


@hookspec(firstresult=True)
def bouncer_auth_method(context: "PluginContext", client: "ClientInfo", app: "App",
                        session: "ClientSession") -> Optional[str]:
    """Choose how a client must authenticate.

    :param context: the narrow view; *client* the client (user, database, address, ``tls``);
        *app* and *session* as for :func:`bouncer_check_client_tls`.
    :return: a method name: ``trust``, ``reject``, ``plain`` (cleartext password), ``md5``,
        ``scram-sha-256``, ``cert``, ``peer`` or one of a plugin's
        (:func:`bouncer_verify_client`, :func:`bouncer_password_checkers`); or ``None`` when
        this implementation has no opinion.  The built-in answer (``auth_type``) comes last.
        Raise :class:`~bouncer.plugin.Refusal` to refuse the client with your own words.

    Called from: the client's greenlet, once per login.
    """


@hookspec(firstresult=True)
def bouncer_get_credentials(context: "PluginContext", user: str, database: str,
                            app: "App") -> Optional["Credentials"]:
    """Find the stored secret for a user.

    Backends chain: the userlist (``auth_file``) answers first, ``auth_query`` after it.

    :param context: the narrow view (``context.config`` is the configuration in force).
    :param user: the user name the client logs in as.
    :param database: the database name the client asked for.
    :param app: bouncer's application object (internals, for the built-in plugins).
    :return: :class:`~bouncer.plugin.Credentials` (the secret may be a plain password, an md5
        secret or a SCRAM secret), or ``None`` when this backend does not know the user.
        Raise :class:`~bouncer.plugin.Refusal` to refuse the login outright.

    Called from: the client's greenlet; may block cooperatively (auth_query runs a query).
    """


@hookspec(firstresult=True)
def bouncer_verify_client(context: "PluginContext", client: "ClientInfo", method: str,
                          app: "App", session: "ClientSession") -> Optional[bool]:
    """Verify a client by a method that is not a password exchange (``cert``, ``peer``, ...).

    :param context: the narrow view; *client* the client (``peer_cert`` / ``peer_uid`` set
        where known); *app* and *session* as for :func:`bouncer_check_client_tls`.
    :param method: the method chosen by :func:`bouncer_auth_method`.
    :return: ``True`` to accept, ``None`` when the method is not this implementation's.  To
        refuse, raise :class:`~bouncer.plugin.Refusal`; any other answer refuses too, with
        bouncer's words (``authentication failed for user ...``), as does no answer at all.

    Called from: the client's greenlet.
    """


@hookspec
def bouncer_password_checkers() -> Mapping[str, "PasswordChecker"]:
    """Contribute methods that check a client's cleartext password against something bouncer
    does not hold: an LDAP directory, PAM (PgBouncer's ``auth_type = ldap`` and ``pam``).

    For such a method (named by ``auth_type`` or an HBA line) bouncer asks the client for a
    cleartext password (AuthenticationCleartextPassword), refuses an empty one as PgBouncer
    does, and calls the checker.  ``bouncer_get_credentials`` is not asked: on success the
    servers are logged into with the password the client sent, as PgBouncer does.

    :return: method name -> ``check(context, client, password) -> bool``, *client* a
        :class:`~bouncer.plugin.ClientInfo`.  The checker answers whether the password is
        right: ``True`` accepts; ``False`` refuses with PgBouncer's words (``LDAP
        authentication failed``); raise :class:`~bouncer.plugin.Refusal` to refuse in your
        own.  Any other exception refuses the client too (fail closed) and is logged.  The
        answers of all implementations are merged; for a method two plugins name, the plugin
        registered last keeps it.  ``auth_type = ldap`` or ``pam`` with no checker for it (and
        no plugin's ``bouncer_verify_client``) is refused at start, RELOAD and
        ``bouncer --check``.

    Called from: the main greenlet, once, when the first configuration is validated (the
    answer is kept for the life of the process: read settings in the checker, not here);
    each login with one of the methods, in the client's greenlet, which calls the checker
    there: it may block cooperatively, must bound how long it takes, and should run calls into
    C libraries in ``gevent.get_hub().threadpool``.
    """


@hookspec
def bouncer_client_login(context: "PluginContext", client: "ClientInfo", ok: bool, reason: str,
                         app: "App", session: "ClientSession") -> None:
    """Observe the outcome of a client's login (for audit).

    :param context: the narrow view; *client* the client; *app* and *session* as for
        :func:`bouncer_check_client_tls`.
    :param ok: whether authentication succeeded.
    :param reason: on failure, why (for logs; never includes a secret).

    Called from: the client's greenlet.
    """


# --------------------------------------------------------------------------------------------
# Limits on server connections
# --------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def bouncer_server_connect_limit(context: "PluginContext", database: str, user: str,
                                 app: "App", pool: "Pool") -> None:
    """Decide whether a new server connection may be opened for a pool now.

    The pool itself enforces its size; this hook adds limits that span pools
    (``max_db_connections``, ``max_user_connections``).  A refused pool is asked again when
    another server connection closes; its clients keep waiting (up to ``query_wait_timeout``).

    :param context: the narrow view.
    :param database: the pool's database name.
    :param user: the pool's user name (the one it logs into servers as).
    :param app: bouncer's application object (internals, for the built-in plugins).
    :param pool: bouncer's pool object (internals, as *app*).
    :return: ``None`` to allow; raise :class:`~bouncer.plugin.Refusal` whose message names
        the limit that is reached (for SHOW output and logs) to hold the connection back.

    Called from: whichever greenlet asks the pool for a server.
    """


# --------------------------------------------------------------------------------------------
# Assignment of server connections
# --------------------------------------------------------------------------------------------

@hookspec
def bouncer_client_waited(database: str, user: str, seconds: float) -> None:
    """Observe that a client which had to queue for a server connection got one.

    Only waits are reported: a client served at once by an idle server costs no hook call, so
    transaction pooling pays nothing per transaction while servers are free.  A wait that ends
    in an error (``query_wait_timeout``, a failing server login, the client killed) is not
    reported here.

    :param database: the pool's database name.
    :param user: the pool's user name.
    :param seconds: how long the client queued (also added to SHOW STATS' ``wait_time``).

    Called from: the client's greenlet, once the server is linked to it.
    """


# --------------------------------------------------------------------------------------------
# Admin console
# --------------------------------------------------------------------------------------------

@hookspec
def bouncer_admin_commands(context: Optional["PluginContext"],
                           app: Optional["App"]) -> Dict[str, Callable[..., Any]]:
    """Contribute admin console commands.

    :param context: the narrow view (``None`` when only the command words are wanted, as the
        documentation checks do); *app* as for :func:`bouncer_check_client_tls`.
    :return: a mapping of command word (upper case, e.g. ``"SHOW PLUGINS"`` or ``"SET USER"``) to
        a handler ``handler(console, args: str) -> Result``; see :mod:`bouncer.admin.commands`
        (a handler may rely on ``console.context``, ``console.user`` and
        ``console.is_admin()``; a :class:`~bouncer.plugin.Refusal` it raises is answered as
        an ERROR and the console stays usable).  All implementations' mappings are merged; a
        later plugin cannot replace a built-in.

    Called from: the main greenlet at start and after a reload.
    """
