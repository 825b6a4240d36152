"""A plugin with a [plugin.demo] section: one setting of each sort the tests need."""
from __future__ import annotations

from typing import Dict, Tuple

from bouncer.plugin import Setting, hookimpl

SETTINGS = (
    Setting("greeting", "str", "hello", True, "a reloadable text", aliases=("salutation",)),
    Setting("retries", "int", 3, False, "a number that needs a restart", min=0, max=10),
    Setting("mode", "enum", "fast", True, "a choice", choices=("fast", "safe")),
)


@hookimpl
def bouncer_declare_settings() -> Dict[str, Tuple[Setting, ...]]:
    return {"demo": SETTINGS}
