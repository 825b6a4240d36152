"""``workers``: the setting, and how a worker's configuration and peers are made."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bouncer.config import PeerDef, load_config
from bouncer.errors import ConfigError
from bouncer.supervisor import RESTART_DELAY_MAX, restart_delay, status_text
from bouncer.worker import WorkerSpec, first_peer_id


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


def test_a_worker_gets_its_peer_id_and_the_others_as_peers(tmp_path: Path) -> None:
    config = spec(2).apply(load(tmp_path, "workers = 3\n"))
    assert config.peer_id == 2
    assert config.peers[3] == PeerDef(peer_id=3, host="/run/w", port=3)
    assert sorted(config.peers) == [1, 2, 3]


def test_worker_ids_start_at_peer_id_and_replace_the_files_entries(tmp_path: Path) -> None:
    config = load(tmp_path, "workers = 2\npeer_id = 10\n[peers]\n"
                            "10 = host=10.0.0.1\n20 = host=10.0.0.2\n")
    worker = spec(2, workers=2, first=first_peer_id(config)).apply(config)
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
