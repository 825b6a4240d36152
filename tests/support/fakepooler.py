"""A stand-in pooler for testing the harness itself: listens where the ini says, does nothing.

``python -m tests.support.fakepooler CONFIG.ini``.  Honours ``listen_port``; test-only keys:
``fake_fail = MESSAGE`` (print it and exit 1 at start-up) and ``fake_ignore_sigquit = 1``.
"""
from __future__ import annotations

import re
import signal
import socket
import sys
from typing import Dict


def read_settings(path: str) -> Dict[str, str]:
    with open(path, encoding="utf-8") as ini:
        return dict(re.findall(r"^\s*(\w+)\s*=\s*(.*?)\s*$", ini.read(), re.M))


def main(ini_path: str) -> int:
    settings = read_settings(ini_path)
    if "fake_fail" in settings:
        print(f"FATAL {settings['fake_fail']}", flush=True)
        return 1
    quit_action = signal.SIG_IGN if settings.get("fake_ignore_sigquit") else (
        lambda signum, frame: sys.exit(0))
    signal.signal(signal.SIGQUIT, quit_action)
    signal.signal(signal.SIGHUP, lambda signum, frame: print("got SIGHUP, re-reading config",
                                                             flush=True))
    listener = socket.create_server(("127.0.0.1", int(settings["listen_port"])))
    print(f"listening on 127.0.0.1:{settings['listen_port']}", flush=True)
    while True:
        client, _ = listener.accept()
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
