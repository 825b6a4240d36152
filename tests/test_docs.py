"""The man pages against the code they document.

bouncer(5) must describe every ``[pgbouncer]`` setting with its default, whether it needs a
restart and whether it is honoured yet; bouncer(1) every command-line option, admin console
command and SHOW column. Each page must build with ``rst2man --halt=2`` (as the package build
does) into a page ``groff -man -ww -z`` has no warning about.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import Dict, List, Tuple

import pytest

from bouncer import cli
from bouncer.admin import checks, merge, show, sockets
from bouncer.config import SETTINGS
from bouncer.config.settings import Setting
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import DISABLE_AUTOLOAD_ENV, make_plugin_manager

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN_DIR = os.path.join(REPO_ROOT, "man")
PAGES = sorted(glob.glob(os.path.join(MAN_DIR, "*.rst")))

#: A definition-list term naming one thing, at the start of a line: ``name``.
_TERM = re.compile(r"^``([A-Za-z0-9_]+)``$")
#: Any inline literal, for terms that name several things: ``a``, ``b``.
_LITERAL = re.compile(r"``([^`]+)``")


def term_lines(text: str) -> str:
    """The lines of *text* that start at the margin: section text and list terms, not the
    indented definitions, so a command merely mentioned somewhere does not count."""
    return "\n".join(line for line in text.splitlines() if line and not line[0].isspace())


def read_page(name: str) -> str:
    with open(os.path.join(MAN_DIR, name), encoding="utf-8") as page:
        return page.read()


def sections(text: str, underline: str) -> Dict[str, str]:
    """Body of each section whose title is underlined with *underline* characters."""
    lines = text.splitlines()
    starts: List[Tuple[str, int]] = [
        (lines[i], i + 2) for i in range(len(lines) - 1)
        if lines[i].strip() and set(lines[i + 1]) == {underline}
        and len(lines[i + 1]) >= len(lines[i].strip())]
    bodies = {}
    for index, (title, start) in enumerate(starts):
        end = starts[index + 1][1] - 2 if index + 1 < len(starts) else len(lines)
        bodies[title.strip()] = "\n".join(lines[start:end])
    return bodies


def definitions(text: str) -> Dict[str, str]:
    """Definition-list entries ``term -> definition`` (whitespace collapsed) for the terms
    that name a single thing and start a line."""
    entries: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        match = _TERM.match(line)
        if match:
            current = match.group(1)
            assert current not in entries, f"``{current}`` is described twice"
            entries[current] = []
        elif line and not line[0].isspace():
            current = None
        elif current is not None:
            entries[current].append(line.strip())
    return {term: " ".join(" ".join(lines).split()) for term, lines in entries.items()}


# -- bouncer(5) ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setting_docs() -> Dict[str, str]:
    page = read_page("bouncer.5.rst")
    return definitions(sections(page, "=")["SECTION [pgbouncer]"])


def test_bouncer5_describes_exactly_the_settings_table(setting_docs):
    assert sorted(setting_docs) == sorted(setting.name for setting in SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.name)
def test_bouncer5_states_default_restart_and_support(setting: Setting, setting_docs):
    doc = setting_docs[setting.name]
    default = f"Default: ``{setting.shown_default}``." if setting.shown_default \
        else "Default: empty."
    assert default in doc
    assert ("Needs a restart." in doc) == (not setting.reloadable)
    assert ("Refused unless off." in doc) == bool(setting.unsupported)
    for alias in setting.aliases:
        assert f"Alias: ``{alias}``" in doc


def test_bouncer5_has_every_section_and_file_format():
    titles = set(sections(read_page("bouncer.5.rst"), "="))
    assert {"SECTION [pgbouncer]", "SECTION [databases]", "SECTION [users]", "SECTION [pools]",
            "SECTION [peers]", "AUTH FILE FORMAT", "HBA FILE FORMAT", "SECURITY"} <= titles


# -- bouncer(1) ------------------------------------------------------------------------------

def admin_commands() -> List[str]:
    """The console's command words with the built-in and default plugins."""
    # The built-in command tables do not look at the app; no App is needed to list them.
    return sorted(PluginHooks(make_plugin_manager()).admin_commands(app=None))


def show_columns() -> List[str]:
    """Every column name of every SHOW result table."""
    tables = [getattr(module, name) for module in (show, sockets, checks, merge)
              for name in dir(module) if name.endswith("_COLUMNS")]
    assert tables, "no *_COLUMNS tables found: has bouncer.admin.show been reorganised?"
    return sorted({column for table in tables for column, _type in table})


@pytest.fixture(scope="module")
def console_doc() -> str:
    return sections(read_page("bouncer.1.rst"), "=")["ADMIN CONSOLE"]


def test_bouncer1_documents_every_admin_command(console_doc: str, monkeypatch):
    # Third-party plugins document their commands themselves (bouncer-plugins(7)).
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    subsections = sections(console_doc, "-")
    commands_terms = term_lines(subsections["Commands"])

    def has_own_subsection(command: str) -> bool:
        word = re.compile(rf"(?<!\w){re.escape(command)}(?!\w)")
        return any(word.search(title) for title in subsections)

    undocumented = [command for command in admin_commands()
                    if f"**{command}**" not in commands_terms and not has_own_subsection(command)]
    assert undocumented == []


def test_bouncer1_documents_every_show_column(console_doc: str):
    documented = {name.strip() for literal in _LITERAL.findall(console_doc)
                  for name in literal.split(",")}
    assert [column for column in show_columns() if column not in documented] == []


def test_bouncer1_documents_every_command_line_option():
    terms = term_lines(sections(read_page("bouncer.1.rst"), "=")["OPTIONS"])
    options = [option for action in cli.build_parser()._actions
               for option in action.option_strings]
    assert options, "the parser has no options?"
    assert [option for option in options if f"**{option}**" not in terms] == []


def test_bouncer1_prefers_rolling_restart_over_reboot():
    restart = sections(read_page("bouncer.1.rst"), "=")["ROLLING RESTART"]
    assert "so_reuseport" in restart and "preferred over **-R**" in restart


# -- building the pages ----------------------------------------------------------------------

def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} is not installed (apt-get install python3-docutils groff-base)")


@pytest.mark.parametrize("source", PAGES, ids=os.path.basename)
def test_page_builds_without_warnings(source: str, tmp_path):
    rst2man = _tool("rst2man", "rst2man.py")
    groff = _tool("groff")
    page = tmp_path / os.path.basename(source)[:-len(".rst")]
    built = subprocess.run([rst2man, "--halt=2", source, str(page)], capture_output=True,
                           text=True)
    assert built.returncode == 0 and not built.stderr, built.stderr
    checked = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True,
                             text=True)
    assert checked.returncode == 0 and not checked.stderr, checked.stderr
