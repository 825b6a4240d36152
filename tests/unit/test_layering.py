"""proto/, auth/ and config/ are sans-IO (issue #14): none of their modules, nor any bouncer
module they import in turn, imports gevent or bouncer.net, so they run and are tested without
an event loop or a socket.  And the daemon never imports bouncer.testing (pytest, psycopg2), and
the first-party plugins use only the stable plugin API (bouncer.plugin), as a third party's
would.

Read from the source (the AST), not by importing: an import inside a function counts too,
one under ``if TYPE_CHECKING:`` does not (it never runs).
"""
from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANS_IO_PACKAGES = ("bouncer.proto", "bouncer.auth", "bouncer.config")
FORBIDDEN = ("gevent", "bouncer.net")


def module_path(module: str) -> Optional[str]:
    """The source file of a bouncer module (a package's ``__init__.py``), or None."""
    base = os.path.join(REPO, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def package_modules(package: str) -> List[str]:
    root = os.path.join(REPO, *package.split("."))
    modules = []
    for directory, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(directory, name[:-3]), REPO).split(os.sep)
                modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def imported_modules(module: str) -> Iterator[str]:
    """What *module* imports when it runs: every name that may be a module (``from a import b``
    gives ``a`` and ``a.b``), with its parent packages, which Python imports first."""
    path = module_path(module)
    assert path is not None, module
    yield from imports_in(path, module)


def imports_in(path: str, module: str) -> Iterator[str]:
    """:func:`imported_modules` of the source file *path*, module *module*."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    is_package = path.endswith("__init__.py")
    for node in _runtime_nodes(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                parts = module.split(".")
                anchor = parts[:len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            yield from (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def forbidden_imports(start: str) -> List[str]:
    """Each forbidden module *start* reaches, as the chain of imports that leads there."""
    via: Dict[str, Optional[str]] = {start: None}
    queue, found = [start], []
    while queue:
        module = queue.pop(0)
        for name in imported_modules(module):
            if name in via:
                continue
            via[name] = module
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                chain: List[str] = [name]
                parent: Optional[str] = module
                while parent is not None:
                    chain.append(parent)
                    parent = via[parent]
                found.append(" <- ".join(chain))
            elif module_path(name) is not None:  # bouncer's own: follow it
                queue.append(name)
    return found


@pytest.mark.parametrize("module", [module for package in SANS_IO_PACKAGES
                                    for module in package_modules(package)])
def test_sans_io_module_imports_no_gevent_and_no_net(module: str) -> None:
    assert forbidden_imports(module) == []


def test_the_check_sees_a_module_that_does_import_gevent() -> None:
    found = forbidden_imports("bouncer.session.relay")
    assert "gevent <- bouncer.session.relay" in found


@pytest.mark.parametrize("module", [module for module in package_modules("bouncer")
                                    if not module.startswith("bouncer.testing")])
def test_the_daemon_never_imports_the_testing_package(module: str) -> None:
    assert not [name for name in imported_modules(module) if name.startswith("bouncer.testing")]


#: What a plugin may import of bouncer when it runs (bouncer-plugins(7), THE PLUGIN API).
PLUGIN_API = ("bouncer", "bouncer.plugin", "bouncer.plugin.context", "bouncer.admin",
              "bouncer.admin.commands", "bouncer.admin.merge")


def plugin_sources() -> Iterator[str]:
    for directory, _, files in os.walk(os.path.join(REPO, "plugins")):
        if os.sep + "tests" not in directory:
            yield from (os.path.join(directory, name) for name in files
                        if name.endswith(".py") and name != "conftest.py")


@pytest.mark.parametrize("path", sorted(plugin_sources()))
def test_first_party_plugins_use_only_the_plugin_api(path: str) -> None:
    bouncer_parts = {name for name in imports_in(path, "plugin_module")
                     if name == "bouncer" or name.startswith("bouncer.")}
    # ``from bouncer.plugin import Refusal`` names bouncer.plugin.Refusal: not a module.
    modules = {name for name in bouncer_parts if module_path(name) is not None}
    assert modules <= set(PLUGIN_API), sorted(modules - set(PLUGIN_API))
