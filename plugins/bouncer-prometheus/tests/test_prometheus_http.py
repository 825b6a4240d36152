"""The WSGI application and the health verdict, without a pooler: fake registries and state."""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, List, Optional, Tuple

import pytest
from gevent.event import Event
from prometheus_client import CollectorRegistry, Counter

from bouncer.errors import ClientError
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


def fake_pool(failed_at: Optional[float], succeeded_at: Optional[float]) -> Any:
    error = ClientError("connection refused", "08006")
    return SimpleNamespace(last_failure=(failed_at, error) if failed_at else None,
                           last_success=succeeded_at)


def fake_app(*databases: Any, paused: bool = False, suspended: bool = False,
             shutdown_mode: Optional[str] = None) -> Any:
    return SimpleNamespace(paused=paused, suspended=suspended, shutdown_mode=shutdown_mode,
                           registry=SimpleNamespace(databases={db.name: db for db in databases}))


def fake_database(name: str, *pools: Any, paused: bool = False) -> Any:
    resumed = Event()
    if not paused:
        resumed.set()
    return SimpleNamespace(name=name, paused=paused, resumed=resumed,
                           pools={f"user{i}": pool for i, pool in enumerate(pools)})


def test_a_healthy_pooler_has_no_problem() -> None:
    now = time.time()
    assert health_problems(fake_app(fake_database("a", fake_pool(now - 5, now)),
                                    fake_database("untried"))) == []


def test_process_states_are_problems() -> None:
    assert health_problems(fake_app(paused=True)) == ["paused (PAUSE on the admin console)"]
    assert health_problems(fake_app(paused=True, suspended=True))[0].startswith("suspended")
    assert health_problems(fake_app(shutdown_mode="wait_for_clients")) == [
        "shutting down (wait for clients)"]


def test_a_database_is_unreachable_only_when_every_tried_pool_fails() -> None:
    now = time.time()
    one_fails = fake_database("mixed", fake_pool(now, None), fake_pool(None, now))
    all_fail = fake_database("down", fake_pool(now, now - 10), fake_pool(now, None),
                             fake_pool(None, None))
    problems = health_problems(fake_app(one_fails, all_fail))
    assert problems == ["database down: no server can be reached (its latest server logins "
                        "failed; SHOW CHECKS says why)"]


def test_a_paused_database_is_a_problem_of_its_own() -> None:
    assert health_problems(fake_app(fake_database("a", paused=True))) == [
        "database a is paused"]
    assert health_problems(fake_app(fake_database("a", paused=True), paused=True)) == [
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
