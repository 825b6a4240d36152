"""``bouncer --check [--connect] FILE``: run the checks and print them, one line per finding.

Problems go to stderr as ``ERROR ...`` lines and warnings as ``WARNING ...``; a good
configuration's summary and the ``--connect`` lines go to stdout.  The exit status is 1 when
anything would fail.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, List, TextIO, cast

from cryptography import x509

from bouncer.check.problems import ConfigCheck, check_config
from bouncer.check.summary import Facts, describe
from bouncer.check.verdict import FAIL
from bouncer.errors import ConfigError
from bouncer.net.certs import CertificateFileError, load_certificates

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config
    from bouncer.plugin.hooks import PluginHooks

#: Built-in plugins are described by the summary itself, not named as plugins.
_BUILTIN_PREFIX = "bouncer.builtin."


def run_check(path: str, connect: bool = False, out: TextIO = sys.stdout,
              err: TextIO = sys.stderr) -> int:
    """Print every problem of *path*, or what it would do; then, with *connect*, one line per
    database login.  :return: the exit status."""
    result = check_config(path)
    for error in result.errors:
        print(f"ERROR {error}", file=err)
    for warning in result.warnings:
        print(f"WARNING {warning}", file=err)
    if not result.ok:
        print(f"{path}: {len(result.errors)} problem(s) found", file=err)
        return 1
    config = cast("Config", result.config)  # (result.ok: the file was read)
    for line in describe(config, _facts(result, config)):
        print(line, file=out)
    print(f"{path}: configuration OK", file=out)
    if not connect:
        return 0
    return _connect(path, out, err)


def _connect(path: str, out: TextIO, err: TextIO) -> int:
    from bouncer.check.connect import check_connections  # gevent and sockets only for this
    try:
        verdicts = check_connections(path)
    except (ConfigError, OSError) as exc:  # the file changed since it was checked
        print(f"ERROR {exc}", file=err)
        return 1
    for verdict in verdicts:
        print(verdict.line, file=out)
    failed = sum(1 for verdict in verdicts if verdict.status == FAIL)
    if failed:
        print(f"{path}: {failed} database login(s) would fail", file=err)
        return 1
    return 0


def _facts(result: ConfigCheck, config: "Config") -> Facts:
    hooks = cast("PluginHooks", result.hooks)  # (loaded before the file was read)
    return Facts(auth_file_users=len(result.userlist) if config.auth_file else None,
                 credential_plugins=_credential_plugins(hooks),
                 certificate_names=_certificate_names(config.client_tls_cert_file)
                 if config.client_tls_sslmode != "disable" else ())


def _credential_plugins(hooks: "PluginHooks") -> List[str]:
    """Third-party credentials backends, in the order pluggy asks them (last registered
    first, tryfirst/trylast respected: the reverse of ``get_hookimpls()``)."""
    impls = hooks.pm.hook.bouncer_get_credentials.get_hookimpls()
    return [impl.plugin_name for impl in reversed(impls)
            if not impl.plugin_name.startswith(_BUILTIN_PREFIX)]


def _certificate_names(path: str) -> List[str]:
    """The DNS names and addresses a client's verify-full can match in the pooler's
    certificate (its common name when it has no subjectAltName)."""
    try:
        leaf = load_certificates(path)[0].to_cryptography()
    except (CertificateFileError, IndexError):
        return []  # the TLS plugin has reported it already
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        # (A common name is a str: only an X.500 unique identifier's value is bytes.)
        return [str(attr.value) for attr in leaf.subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME)]
    return [str(value) for kind in (x509.DNSName, x509.IPAddress)
            for value in names.get_values_for_type(kind)]
