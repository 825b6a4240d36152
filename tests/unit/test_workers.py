"""``workers``: the setting, and how a worker's configuration and peers are made."""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest

from bouncer import session
from bouncer.config import PeerDef, load_config
from bouncer.errors import ConfigError
from bouncer.supervisor import RESTART_DELAY_MAX, restart_delay, status_text
from bouncer.worker import WorkerSpec


def load(tmp_path: Path, text: str):
    path = tmp_path / "bouncer.ini"
    path.write_text("[pgbouncer]\n" + text)
    return load_config(str(path))


def spec(index: int, workers: int = 3, first: int = 1) -> WorkerSpec:
    return WorkerSpec(index=index, workers=workers, first_peer_id=first, peer_dir="/run/w",
                      supervisor_pid=1, listen_fds=(3, 4), ready_fd=5, slot_fd=6)


def test_workers_defaults_to_one_and_auto_is_the_cores(tmp_path: Path) -> None:
    assert load(tmp_path, "").workers == 1
    assert load(tmp_path, "workers = auto\n").workers == (os.cpu_count() or 1)
    assert load(tmp_path, "workers = 4\n").workers == 4


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_workers_refuses_what_is_not_a_count(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="workers"):
        load(tmp_path, f"workers = {value}\n")


def test_check_refuses_workers_past_the_last_peer_id(tmp_path: Path) -> None:
    """What --check, start and RELOAD report: each worker needs a peer id of its own."""
    assert load(tmp_path, "workers = 4\npeer_id = 16380\n").workers == 4
    with pytest.raises(ConfigError, match="16381 to 16384, but the highest is 16383"):
        load(tmp_path, "workers = 4\npeer_id = 16381\n")
    assert load(tmp_path, "workers = 1\npeer_id = 16383\n").peer_id == 16383


def test_a_worker_gets_its_peer_id_and_the_others_as_peers(tmp_path: Path) -> None:
    config = spec(2).apply(load(tmp_path, "workers = 3\n"))
    assert config.peer_id == 2
    assert config.peers[3] == PeerDef(peer_id=3, host="/run/w", port=3)
    assert sorted(config.peers) == [1, 2, 3]


def test_worker_ids_start_at_peer_id_and_replace_the_files_entries(tmp_path: Path) -> None:
    config = load(tmp_path, "workers = 2\npeer_id = 10\n[peers]\n"
                            "10 = host=10.0.0.1\n20 = host=10.0.0.2\n")
    worker = spec(2, workers=2, first=config.worker_peer_ids()[0]).apply(config)
    assert worker.peer_id == 11
    assert worker.peers[10].host == "/run/w"
    assert worker.peers[20].host == "10.0.0.2"  # another pooler of the peer group


def test_spec_survives_the_environment() -> None:
    from bouncer import worker
    os.environ[worker.ENV] = spec(1).to_env()
    assert worker.from_environment() == spec(1)
    assert worker.ENV not in os.environ


def test_exit_status_words() -> None:
    assert status_text(-9) == "was killed by signal SIGKILL"
    assert status_text(1) == "exited with status 1"


def test_a_worker_dying_at_start_waits_longer_each_time_a_stable_one_not_at_all() -> None:
    delays = [0.0]
    for _ in range(10):
        delays.append(restart_delay(delays[-1], ran=0.2))
    assert delays[1:4] == [0.5, 1.0, 2.0] and delays[-1] == RESTART_DELAY_MAX
    assert restart_delay(RESTART_DELAY_MAX, ran=60) == 0.0


def test_every_socket_id_a_worker_numbers_leads_back_to_it() -> None:
    for index in (1, 2, 3):
        ids = itertools.islice(itertools.count(index, 3), 10)  # as number_socket_ids does
        assert {spec(index).owner_of(socket_id) for socket_id in ids} == {index}


def test_a_worker_numbers_its_sockets_apart_from_the_others() -> None:
    saved = session._socket_ids  # this test process's own numbering goes on afterwards
    try:
        session.number_socket_ids(2, 3)
        assert [session.next_socket_id() for _ in range(3)] == [2, 5, 8]
    finally:
        session._socket_ids = saved


def test_a_starting_worker_receives_its_clients_and_changes_over_its_line() -> None:
    """What the supervisor sends (send_start) is what the worker reads (receive_start): each
    client's row with a working descriptor, then the journal, in order."""
    import socket
    from bouncer.admin.journal import KEPT, UNTIL_RELOAD, Change
    from bouncer.session.handover import client_row
    from bouncer.takeover import TakenClient
    from bouncer.worker import send_start
    from tests.unit.test_handover import as_received, fake_client
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client_end, pooler_end = socket.socketpair()
    row = as_received(client_row(fake_client()))
    changes = [Change(UNTIL_RELOAD, "SET query_wait_timeout = 9", "admin", True),
               Change(KEPT, "DISABLE bench", "admin", True)]
    with ours, theirs, client_end, pooler_end:
        ours.send(b"j{not json")  # a record the worker cannot read is dropped, with a warning
        send_start(ours, [TakenClient(pooler_end, row, None)], changes)  # type: ignore[arg-type]
        worker = dataclasses.replace(spec(1), ready_fd=theirs.fileno())
        start = worker.receive_start()
        (sock, state), = start.clients
        assert start.changes == changes and state.user == "scramuser"
        with sock:
            sock.sendall(b"ping")
            assert client_end.recv(4) == b"ping"
