"""LocalStorage under concurrency: gunicorn threads of one worker storing the same key at once."""

from __future__ import annotations

import os
import threading


def test_two_threads_storing_the_same_key_at_once_both_succeed(tmp_path):
    """The same bytes stored twice at once (a client retrying an upload that is still being processed,
    two closes publishing one round's candidate): each put has its own temp file, so neither
    finds its temp renamed away by the other (a FileNotFoundError, a 500)."""
    from fleet_server import LocalStorage

    st = LocalStorage(tmp_path / "store")
    blob = os.urandom(1 << 20)
    errors: list[BaseException] = []
    for attempt in range(30):
        go = threading.Barrier(2)

        def put(i: int, attempt: int = attempt, go: threading.Barrier = go) -> None:
            src = tmp_path / f"src-{attempt}-{i}"
            src.write_bytes(blob)
            go.wait()
            try:
                st.put_file(f"releases/x/x-{attempt}.bin", src)
            except OSError as e:
                errors.append(e)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    assert all(b"".join(st.read_range(f"releases/x/x-{a}.bin")) == blob for a in range(30))
    assert not [p for p in (tmp_path / "store").rglob(".*.tmp")]
