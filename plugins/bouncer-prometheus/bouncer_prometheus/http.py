"""The HTTP listener: ``/metrics`` (prometheus_client's own WSGI app, so content negotiation,
OpenMetrics and gzip are the library's) and ``/healthz``, served by a gevent WSGIServer in
bouncer's own event loop: a scrape runs in a greenlet like any client, reads the pooler's state
between two of its events, and needs no thread or lock."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, List, Optional

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger("bouncer.plugins.prometheus")  # under bouncer's own logger

StartResponse = Callable[..., Any]
_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def make_app(registry: CollectorRegistry,
             health: Callable[[], List[str]]) -> Callable[[dict, StartResponse], Iterable[bytes]]:
    """The WSGI application: ``/metrics``, ``/healthz`` (200 ``ok``, or 503 and one problem
    per line), 404 for anything else."""
    metrics = make_wsgi_app(registry)

    def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            problems = health()
            start_response("503 Service Unavailable" if problems else "200 OK", _TEXT)
            return ["".join(f"{problem}\n" for problem in problems or ["ok"]).encode()]
        start_response("404 Not Found", _TEXT)
        return [b"not found: try /metrics or /healthz\n"]
    return application


class MetricsServer:
    """One listening address; :meth:`start` binds (raising OSError if it cannot)."""

    def __init__(self, address: str, port: int,
                 application: Callable[[dict, StartResponse], Iterable[bytes]]) -> None:
        self.address, self.port = address, port
        self._server: Optional[WSGIServer] = WSGIServer((address, port), application, log=None,
                                                        error_log=log)

    def start(self) -> None:
        server = self._server
        if server is None:  # (a WSGIServer is not restartable: stop() dropped it)
            raise RuntimeError("prometheus: this listener was stopped")
        server.start()
        self.port = server.server_port  # the one chosen when port 0 was asked for
        log.info("prometheus: listening on %s port %d (/metrics, /healthz)", self.address,
                 self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
