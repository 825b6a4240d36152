"""Installing a first-party plugin distribution from plugins/ the way a user would (pip), into
a directory of its own that a test puts on the bouncer subprocess's PYTHONPATH: the plugin is
then found through its ``bouncer.plugins`` entry point, as an installed one is."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

from bouncer.testing.process import REPO_ROOT


def plugin_dir(distribution: str) -> str:
    return os.path.join(REPO_ROOT, "plugins", distribution)


def install_plugin(distribution: str, workdir: str) -> str:
    """``pip install`` plugins/*distribution* (no dependencies) under *workdir*; returns the
    directory it went to.  Built from a copy: setuptools writes build/ and *.egg-info next to
    the sources."""
    source = os.path.join(workdir, "src")
    shutil.copytree(plugin_dir(distribution), source,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = os.path.join(workdir, "site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
               "--disable-pip-version-check", "--target", target, source]
    if _can_build_wheels_offline():
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def _can_build_wheels_offline() -> bool:
    """setuptools builds wheels by itself from 70.1, older ones need the ``wheel`` package."""
    return (importlib.util.find_spec("wheel") is not None
            or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)
