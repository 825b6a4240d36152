"""A typed facade over the hook relay, and the error policy for each kind of hook.

Core code calls hooks only through :class:`PluginHooks`: pluggy cannot type-check
``pm.hook.x(...)`` calls, and this is the one place that decides what an exception in a plugin
means.  Decision hooks fail closed (the client gets a FATAL, the daemon lives); observer hooks
are logged and ignored.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import pluggy

from bouncer.config import ConfigProblems, merge_declarations
from bouncer.errors import ClientError, ConfigError, Refusal
from bouncer.plugin.client import ClientInfo
from bouncer.plugin.context import PluginContext, hba_lines
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    from bouncer.app import App
    from bouncer.auth.store import Credentials
    from bouncer.config import Config
    from bouncer.config.plugin_settings import Declarations
    from bouncer.pool.pool import Pool
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

#: auth_type values that no built-in verifies: a plugin's bouncer_password_checkers (or its
#: bouncer_verify_client) must.
PLUGIN_AUTH_TYPES = ("ldap", "pam")

#: ``check(context, client, password) -> bool`` (bouncer_password_checkers).
PasswordChecker = Callable[[PluginContext, ClientInfo, str], bool]


def direct_caller(caller: Any) -> Callable[[Mapping[str, Any]], Any]:
    """A function of the hook's arguments (one mapping) that calls *caller*'s (a pluggy
    hook caller's)
    implementations as pluggy does (the one registered last first; a ``firstresult`` hook
    stops at the first answer that is not ``None``, the others return every such answer),
    without pluggy's checks, copies and frames at each call.

    Five hooks run for every login: in a connection storm they took about a tenth of its CPU
    time, much of it pluggy's own (bench/README.md).  The implementations are read once:
    plugins are all registered before PluginHooks is made.  A hook with a wrapper is left to
    pluggy, which alone runs wrappers.
    """
    impls = caller.get_hookimpls()
    # (new-style wrappers came with pluggy 1.1: bookworm's 1.0 knows only hookwrapper)
    if any(getattr(impl, "wrapper", False) or impl.hookwrapper for impl in impls):
        return lambda kwargs: caller(**kwargs)
    calls = [(impl.function, impl.argnames) for impl in reversed(impls)]
    if caller.spec is not None and caller.spec.opts.get("firstresult"):
        def first_answer(kwargs: Mapping[str, Any]) -> Any:
            for function, argnames in calls:
                answer = function(*map(kwargs.__getitem__, argnames))
                if answer is not None:
                    return answer
            return None
        return first_answer

    def every_answer(kwargs: Mapping[str, Any]) -> List[Any]:
        answers = [function(*map(kwargs.__getitem__, argnames)) for function, argnames in calls]
        return [answer for answer in answers if answer is not None]
    return every_answer


class PluginFailure(ClientError):
    """A decision hook raised: the client is refused (fail closed)."""

    def __init__(self, hook: str, exc: BaseException) -> None:
        super().__init__("authentication failed (plugin error)", sqlstate.INVALID_AUTHORIZATION)
        self.hook = hook
        self.original = exc


class PluginHooks:
    """One typed method per hook; see :mod:`bouncer.plugin.hookspecs` for the contracts."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._relay = pm.hook
        #: Hook name -> its direct_caller() (any hook caller: pluggy 1.0 exports no
        #: HookCaller class to test for).
        self._callers = {name: direct_caller(caller) for name, caller in vars(pm.hook).items()
                         if hasattr(caller, "get_hookimpls")}
        self._checkers: Optional[Dict[str, PasswordChecker]] = None

    # -- decision hooks: exceptions become PluginFailure ------------------------------------

    def _decide(self, name: str, **kwargs: Any) -> Any:
        try:
            return self._callers[name](kwargs)
        except ClientError:
            raise  # a deliberate refusal, already worded for the client
        except Exception as exc:
            log.error("plugin hook %s failed: %r", name, exc, exc_info=True)
            raise PluginFailure(name, exc) from exc

    def client_tls_context(self, app: Optional["App"],
                           config: "Config") -> Optional["ssl.SSLContext"]:
        return self._relay.bouncer_client_tls_context(app=app, config=config)

    def server_tls_context(self, app: Optional["App"],
                           config: "Config") -> Optional["ssl.SSLContext"]:
        return self._relay.bouncer_server_tls_context(app=app, config=config)

    def tls_contexts(self, app: Optional["App"],
                     config: "Config") -> Tuple[Optional[Any], Optional["ssl.SSLContext"]]:
        """The client and server contexts for *config* (PgBouncer's TLS setup); *app* is None
        under ``bouncer --check``.

        :raises ConfigProblems: every problem of both sides (one failing does not hide the
            other's).
        """
        contexts: List[Any] = []
        problems: List[ConfigError] = []
        for build in (self.client_tls_context, self.server_tls_context):
            try:
                contexts.append(build(app, config))
            except ConfigError as err:
                problems.extend(getattr(err, "problems", (err,)))
            except Refusal as refusal:  # a plugin's policy says no in the plugin API's way
                problems.append(ConfigError(refusal.message))
        if problems:
            raise ConfigProblems(problems)
        return contexts[0], contexts[1]

    def _about(self, session: "ClientSession") -> Dict[str, Any]:
        """The arguments of a hook about a client: the stable views, and the insides."""
        return {"context": session.app.plugin_context, "client": session.info,
                "app": session.app, "session": session}

    def _gate(self, name: str, session: "ClientSession") -> None:
        """A hook that lets a client by with ``None`` and refuses by raising.  Any answer is
        a plugin written for another contract (one that returned its refusal): refused, so
        that such a plugin never lets by a client it meant to keep out.

        :raises ClientError: the client is refused.
        """
        answer = self._decide(name, **self._about(session))
        if answer is not None:
            log.error("plugin hook %s answered %r: it must return None, and raise "
                      "bouncer.plugin.Refusal to refuse", name, answer)
            raise PluginFailure(name, TypeError(f"{name} answered {answer!r}"))

    def check_client_tls(self, session: "ClientSession") -> None:
        """:raises ClientError: the transport is refused (a plugin's Refusal among them)."""
        self._gate("bouncer_check_client_tls", session)

    def client_admit(self, session: "ClientSession") -> None:
        """:raises ClientError: the client is refused."""
        self._gate("bouncer_client_admit", session)

    def auth_method(self, session: "ClientSession") -> Optional[str]:
        return self._decide("bouncer_auth_method", **self._about(session))

    def get_credentials(self, app: "App", user: str, database: str) -> Optional["Credentials"]:
        return self._decide("bouncer_get_credentials", context=app.plugin_context, user=user,
                            database=database, app=app)

    def verify_client(self, session: "ClientSession", method: str) -> bool:
        """Whether a plugin accepts the client by *method*.

        :raises ClientError: a plugin refused it in its own words.
        """
        return self._decide("bouncer_verify_client", method=method,
                            **self._about(session)) is True

    def password_checkers(self) -> Dict[str, PasswordChecker]:
        """Method name -> its checker, merged over the plugins (pluggy asks the plugin
        registered last first, and the first answer for a method keeps it).

        Asked once: plugins are registered at start only, and every login looks its method
        up here (a hook call per login would cost a connection storm)."""
        if self._checkers is None:
            merged: Dict[str, PasswordChecker] = {}
            for table in self._relay.bouncer_password_checkers():
                for method, checker in (table or {}).items():
                    merged.setdefault(method, checker)
            self._checkers = merged
        return self._checkers

    def check_password(self, checker: PasswordChecker, session: "ClientSession",
                       password: str) -> bool:
        """Run a checker with the decision hooks' policy: a plugin error refuses the client."""
        try:
            return checker(session.app.plugin_context, session.info, password) is True
        except ClientError:
            raise
        except Exception as exc:
            log.error("plugin hook bouncer_password_checkers: the checker failed: %r", exc,
                      exc_info=True)
            raise PluginFailure("bouncer_password_checkers", exc) from exc

    def server_connect_limit(self, app: "App", pool: "Pool") -> Optional[str]:
        """The name of the limit that holds a new server of *pool* back, or ``None``."""
        # Failing closed here means "no new server": clients wait, then time out.
        try:
            answer = self._callers["bouncer_server_connect_limit"](
                {"context": app.plugin_context, "database": pool.database.name,
                 "user": pool.user.name, "app": app, "pool": pool})
        except Refusal as refusal:
            return refusal.message
        except Exception:
            log.error("plugin hook bouncer_server_connect_limit failed", exc_info=True)
            return "plugin error"
        if answer is not None:
            log.error("plugin hook bouncer_server_connect_limit answered %r: it must return "
                      "None, and raise bouncer.plugin.Refusal to hold a server back", answer)
            return "plugin error"
        return None

    def declared_settings(self) -> "Declarations":
        """Every plugin's ``[plugin.NAME]`` settings.

        :raises ConfigError: a declaration is malformed or a section is declared twice.
        """
        try:
            return merge_declarations(self._relay.bouncer_declare_settings())
        except ValueError as exc:
            raise ConfigError(f"plugin settings: {exc}", key="plugins") from None

    def validate_config(self, config: "Config") -> List[str]:
        """Every plugin's problems with *config*, and an auth_type that only a plugin could
        verify when none is loaded (every login would fail)."""
        problems: List[str] = []
        for result in self._relay.bouncer_validate_config(config=config):
            problems.extend(result or ())
        if self._third_party_verifiers():
            return problems  # a verify_client of a plugin may answer any method: trust it
        checked = self.password_checkers()
        if config.auth_type in PLUGIN_AUTH_TYPES and config.auth_type not in checked:
            problems.append(
                f"auth_type = {config.auth_type}: no loaded plugin verifies {config.auth_type} "
                "logins (bouncer has no built-in one), so every login would fail; choose "
                f"another auth_type, or install bouncer-{config.auth_type} (or a plugin that "
                "implements bouncer_password_checkers or bouncer_verify_client)")
        if config.auth_type == "hba":
            problems.extend(f"{config.auth_hba_file}:{rule.lineno}: no loaded plugin verifies "
                            f"{rule.method} logins, so this line would refuse every login; "
                            f"install bouncer-{rule.method}"
                            for rule in hba_lines(config)
                            if rule.method in PLUGIN_AUTH_TYPES and rule.method not in checked)
        return problems

    def _third_party_verifiers(self) -> List[str]:
        return [impl.plugin_name for impl in self._relay.bouncer_verify_client.get_hookimpls()
                if not impl.plugin_name.startswith("bouncer.builtin.")]

    def admin_commands(self, app: Optional["App"]) -> Dict[str, Callable[..., Any]]:
        merged: Dict[str, Callable[..., Any]] = {}
        context = app.plugin_context if app is not None else None
        # pluggy returns results last-registered first, and built-ins are registered last
        # (manager.py), so with setdefault a plugin cannot replace a built-in command.
        for table in self._relay.bouncer_admin_commands(context=context, app=app):
            for word, handler in (table or {}).items():
                merged.setdefault(word.upper(), handler)
        return merged

    # -- observer hooks: exceptions are logged and ignored ----------------------------------

    def _observe(self, name: str, **kwargs: Any) -> None:
        try:
            self._callers[name](kwargs)
        except Exception:
            log.error("plugin hook %s failed (ignored)", name, exc_info=True)

    def startup(self, app: "App") -> None:
        self._observe("bouncer_startup", app=app, context=app.plugin_context)

    def reload(self, app: "App", old_config: "Config", new_config: "Config") -> None:
        self._observe("bouncer_reload", app=app, context=app.plugin_context,
                      old_config=old_config, new_config=new_config)

    def shutdown(self, app: "App") -> None:
        self._observe("bouncer_shutdown", app=app, context=app.plugin_context)

    def client_login(self, session: "ClientSession", ok: bool, reason: str) -> None:
        self._observe("bouncer_client_login", ok=ok, reason=reason, **self._about(session))

    def client_waited(self, database: str, user: str, seconds: float) -> None:
        self._observe("bouncer_client_waited", database=database, user=user, seconds=seconds)
