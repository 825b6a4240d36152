"""Every hook in bouncer/plugin/hookspecs.py is documented in bouncer-plugins(7) and exercised
by at least one test; nothing documents or tests a hook that does not exist.

The conventions these tests hold everyone to:

* **Documented**: man/bouncer-plugins.7.rst has a section titled with the hook's full name
  (underlined with ``~``).  Its first paragraph is the signature,
  ``bouncer_<name>(arg, ...) -> ...``, naming the spec's arguments in the spec's order, and it
  has the fields ``:Called:`` (when), ``:Greenlet:`` (from where), ``:Returns:`` and
  ``:None means:``.
* **Exercised**: a test function named ``test_hook_<name>`` or ``test_hook_<name>_<what>``
  (``<name>`` is the hook's name without ``bouncer_``), anywhere under ``tests/`` or a first-party
  plugin's ``plugins/*/tests/``, calls the hook through bouncer and asserts what it changed.
"""
from __future__ import annotations

import ast
import glob
import inspect
import os
import re
from typing import Dict, Iterator, List

import pytest

from bouncer.plugin import NAME, hookspecs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, "man", "bouncer-plugins.7.rst")
HOOK_PREFIX = "bouncer_"
TEST_PREFIX = "test_hook_"
REQUIRED_FIELDS = (":Called:", ":Greenlet:", ":Returns:", ":None means:")


def hook_specs() -> Dict[str, inspect.Signature]:
    """Hook name -> its declared signature (functions pluggy marked as specs)."""
    marker = f"{NAME}_spec"
    return {name: inspect.signature(function)
            for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(function, marker)}


def guide_sections() -> Dict[str, str]:
    """Hook section title -> its text, for the sections underlined with ``~``."""
    with open(GUIDE, encoding="utf-8") as guide:
        lines = guide.read().splitlines()
    sections: Dict[str, str] = {}
    title = None
    for line, underline in zip(lines, lines[1:] + [""]):
        if underline and set(underline) <= set("=-~") and len(underline) >= len(line) > 0:
            title = line if set(underline) == {"~"} else None
            if title is not None:
                sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    return sections


def defined_test_names() -> Iterator[str]:
    """Every ``test_*`` function or method defined under tests/ and plugins/*/tests/."""
    paths = glob.glob(os.path.join(REPO, "tests", "**", "*.py"), recursive=True)
    paths += glob.glob(os.path.join(REPO, "plugins", "*", "tests", "**", "*.py"), recursive=True)
    for path in paths:
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name.startswith("test_"):
                yield node.name



def short(hook: str) -> str:
    return hook[len(HOOK_PREFIX):]


def exercising_tests(hook: str, names: List[str]) -> List[str]:
    pattern = re.compile(rf"{TEST_PREFIX}{re.escape(short(hook))}(_|$)")
    return [name for name in names if pattern.match(name)]


HOOKS = sorted(hook_specs())


def test_hookspecs_are_found() -> None:
    assert len(HOOKS) >= 10 and all(hook.startswith(HOOK_PREFIX) for hook in HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_documented_with_its_signature_and_contract(hook: str) -> None:
    sections = guide_sections()
    assert hook in sections, f"man/bouncer-plugins.7.rst has no section {hook}"
    text = sections[hook]
    signature = re.search(rf"``{hook}\(([^)]*)\)", text)
    assert signature, f"section {hook} does not start with ``{hook}(...) -> ...``"
    documented = [arg.strip() for arg in signature.group(1).split(",") if arg.strip()]
    assert documented == list(hook_specs()[hook].parameters)
    missing = [field for field in REQUIRED_FIELDS if field not in text]
    assert not missing, f"section {hook} lacks {missing}"


def test_guide_documents_no_hook_that_does_not_exist() -> None:
    assert sorted(guide_sections()) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_exercised_by_a_test(hook: str) -> None:
    found = exercising_tests(hook, list(defined_test_names()))
    assert found, f"no test named {TEST_PREFIX}{short(hook)}[_...] exercises {hook}"


def test_every_test_hook_name_names_an_existing_hook() -> None:
    names = [name for name in defined_test_names() if name.startswith(TEST_PREFIX)]
    orphans = [name for name in names
               if not any(exercising_tests(hook, [name]) for hook in HOOKS)]
    assert not orphans, f"these tests name no hook in hookspecs.py: {orphans}"
