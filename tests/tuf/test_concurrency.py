"""Several server processes (gunicorn workers) publishing at once keep one
consistent repository: the file lock serialises each read-modify-write."""

from __future__ import annotations

import multiprocessing as mp

from fleet_server._tuf import TufRepository, group_role


def _publish(directory: str, online, federated, worker: int) -> None:
    repo = TufRepository(directory, online, federated)
    for i in range(5):
        repo.publish_target("default", f"w{worker}-{i}.edgepack", f"{worker}-{i}".encode())
        repo.refresh_online()


def test_concurrent_publishes_from_processes_lose_nothing(repo, tuf_keys, make_client) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_publish, args=(str(repo.dir), tuf_keys.online, tuf_keys.federated, w))
             for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(repo.targets_for("default")) == 15
    assert repo.status()[group_role("default")]["version"] == 1 + 15
    client = make_client()
    client.refresh()
    for w in range(3):
        for i in range(5):
            assert client.target_info(f"groups/default/w{w}-{i}.edgepack") is not None
