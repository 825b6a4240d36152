"""The linter (ruff) and the type checker (mypy) pass on bouncer/ and plugins/ (issue #14).

Both run with the settings in pyproject.toml, from the repository root, as a developer would
run them by hand; ``make test`` installs them with the test extras.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(module: str, args: List[str]) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'", pytrace=False)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=100)


def test_ruff_finds_nothing() -> None:
    result = run_tool("ruff", ["check", "--no-fix"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    # Its cache (.mypy_cache) makes a run after the first take well under a second.
    result = run_tool("mypy", [])
    assert result.returncode == 0, result.stdout + result.stderr
