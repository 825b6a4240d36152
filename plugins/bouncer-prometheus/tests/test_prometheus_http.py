"""The WSGI application and the health verdict, without a pooler: fake registries and
contexts."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, Counter

from bouncer.plugin.context import ProcessState
from bouncer_prometheus.health import health_problems
from bouncer_prometheus.http import make_app


def call(app: Any, path: str) -> Tuple[str, bytes]:
    answer: List[str] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""},
                        lambda status, headers: answer.append(status)))
    return answer[0], body


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_events", "events", registry=registry).inc(3)
    return registry


def test_metrics_is_the_librarys_exposition(registry) -> None:
    status, body = call(make_app(registry, lambda: []), "/metrics")
    assert status.startswith("200") and b"demo_events_total 3.0" in body


def test_healthz_lists_each_problem_with_503(registry) -> None:
    assert call(make_app(registry, lambda: []), "/healthz") == ("200 OK", b"ok\n")
    status, body = call(make_app(registry, lambda: ["paused", "database x is paused"]),
                        "/healthz")
    assert status.startswith("503") and body == b"paused\ndatabase x is paused\n"


def test_other_paths_are_not_found(registry) -> None:
    assert call(make_app(registry, lambda: []), "/")[0].startswith("404")


def fake_context(checks=(), paused_databases=(), **state: Any) -> Any:
    """A context whose SHOW CHECKS has *checks* ((database, status) pairs) and whose SHOW
    DATABASES marks *paused_databases* paused."""
    rows = {
        "CHECKS": [{"database": database, "status": status} for database, status in checks],
        "DATABASES": [{"name": name, "paused": int(name in paused_databases)}
                      for name in ("a", "b", "pgbouncer")],
    }
    flags = {"paused": False, "suspended": False, "shutting_down": None, **state}
    return SimpleNamespace(state=ProcessState(**flags), show=lambda command: rows[command])


def test_a_healthy_pooler_has_no_problem() -> None:
    assert health_problems(fake_context([("a", "ok"), ("a", "failing"), ("b", "untried")])) == []


def test_process_states_are_problems() -> None:
    assert health_problems(fake_context(paused=True)) == ["paused (PAUSE on the admin console)"]
    assert health_problems(fake_context(paused=True, suspended=True))[0].startswith("suspended")
    assert health_problems(fake_context(shutting_down="wait_for_clients")) == [
        "shutting down (wait for clients)"]


def test_a_database_is_unreachable_only_when_every_tried_pool_fails() -> None:
    checks = [("mixed", "failing"), ("mixed", "ok"), ("down", "failing"), ("down", "failing"),
              ("down", "untried"), ("new", "untried")]
    assert health_problems(fake_context(checks)) == [
        "database down: no server can be reached (its latest server logins failed; SHOW "
        "CHECKS says why)"]


def test_a_paused_database_is_a_problem_of_its_own() -> None:
    assert health_problems(fake_context(paused_databases=["a"])) == ["database a is paused"]
    assert health_problems(fake_context(paused_databases=["a", "b"], paused=True)) == [
        "paused (PAUSE on the admin console)"]


def test_a_live_listener_serves_and_stops(registry) -> None:
    """The gevent WSGIServer in this process's loop, fetched with a plain socket."""
    import gevent.socket as gsocket

    from bouncer_prometheus.http import MetricsServer

    server = MetricsServer("127.0.0.1", 0, make_app(registry, lambda: []))
    server.start()
    try:
        with gsocket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    finally:
        server.stop()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nok\n")
    with pytest.raises(OSError):
        gsocket.create_connection(("127.0.0.1", server.port), timeout=2).close()
