"""The fold journal: records on disk (memory fixed in N), consistent with the sums after any crash."""

from __future__ import annotations

import shutil
import sqlite3
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgepack.federated import AccumulatorStateError, ParamSpec, RoundAccumulator, flag_outlier
from edgepack.federated._state import load_state, save_state

TINY = ParamSpec.from_params({"w": np.zeros(4, np.float32)})


def test_python_memory_does_not_grow_with_the_number_of_updates() -> None:
    acc = RoundAccumulator(TINY)
    x = {"w": np.ones(4, np.float32)}
    for i in range(200):
        acc.fold(f"warm-{i}", x, 1.0, distance=1.0, norm=2.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            acc.fold(f"update-{i:06d}-with-a-realistic-length", x, 1.0, distance=float(i % 7), norm=2.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A list + set of 20,000 records (the old design) was ~4 MB. On disk, nothing per update stays in
    # Python; what remains is sqlite3's bounded caches (measured: under 50 KB, not growing with N).
    assert grown < 150_000, grown
    assert acc.count == 20_200 and "update-019999-with-a-realistic-length" in acc and "update-20000" not in acc


def test_distance_stats_equal_numpy_and_drive_the_outlier_check() -> None:
    acc = RoundAccumulator(TINY)
    d = np.random.default_rng(3).gamma(2.0, size=40)
    for i, v in enumerate(d):
        acc.fold(str(i), {"w": np.zeros(4, np.float32)}, 1.0, distance=float(v))
    acc.fold("no-distance", {"w": np.zeros(4, np.float32)}, 1.0)
    n, mean, std = acc.distance_stats()
    assert n == 40 and mean == pytest.approx(d.mean(), rel=1e-12) and std == pytest.approx(d.std(), rel=1e-12)
    probe = float(d.mean() + 3 * d.std())
    assert flag_outlier(probe * 1.01, list(d)).flagged and not flag_outlier(probe * 0.99, list(d)).flagged


def test_records_and_stats_survive_save_and_load(tmp_path: Path, spec: ParamSpec, rng: np.random.Generator,
                                                 make_params: Callable) -> None:
    acc = RoundAccumulator(spec)
    for i in range(3):
        acc.fold(f"u{i}", make_params(rng, spec), i + 1, scale=0.5, distance=float(i), norm=3.0 + i)
    acc.save(tmp_path / "r.state")
    back = RoundAccumulator.load(tmp_path / "r.state", spec)
    assert [r.to_dict() for r in back.iter_records()] == [r.to_dict() for r in acc.records]
    assert back.distance_stats() == acc.distance_stats() and back.count == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.state", "r.state.records"]


def test_records_past_the_saved_count_are_dropped_on_load(tmp_path: Path, spec: ParamSpec, rng: np.random.Generator,
                                                          make_params: Callable) -> None:
    path = tmp_path / "r.state"
    acc = RoundAccumulator(spec)
    acc.fold("a", make_params(rng, spec), 1)
    acc.save(path)
    acc.fold("b", make_params(rng, spec), 1)
    acc._journal.commit()  # a crash after the journal's commit, before the state file was replaced
    back = RoundAccumulator.load(path, spec)
    assert back.accepted_ids == ["a"] and "b" not in back and back.weight_sum == 1
    assert back.fold("b", make_params(rng, spec), 1) is True  # the retry is counted once, now
    back.save(path)
    assert RoundAccumulator.load(path, spec).accepted_ids == ["a", "b"]


def test_an_unsaved_fold_is_rolled_back_when_the_process_dies(tmp_path: Path, spec: ParamSpec,
                                                              rng: np.random.Generator, make_params: Callable) -> None:
    path = tmp_path / "r.state"
    acc = RoundAccumulator(spec)
    acc.fold("a", make_params(rng, spec), 1)
    acc.save(path)
    acc.fold("b", make_params(rng, spec), 1)  # appended in an open transaction, never committed
    # A second reader (the restarted server) sees only what was committed with the state.
    back = RoundAccumulator.load(path, spec)
    assert back.accepted_ids == ["a"]


def _saved(tmp_path: Path, name: str, ids: list[str]) -> Path:
    acc = RoundAccumulator(TINY)
    for u in ids:
        acc.fold(u, {"w": np.ones(4, np.float32)}, 1)
    acc.save(tmp_path / name)
    return tmp_path / name


def test_a_state_file_without_its_records_is_refused(tmp_path: Path) -> None:
    p = _saved(tmp_path, "r.state", ["a"])
    (tmp_path / "r.state.records").unlink()
    with pytest.raises(AccumulatorStateError, match="records file is missing"):
        RoundAccumulator.load(p, TINY)


def test_records_of_another_accumulator_are_refused(tmp_path: Path) -> None:
    p = _saved(tmp_path, "r.state", ["a"])
    q = _saved(tmp_path, "q.state", ["a", "b"])
    shutil.copyfile(q.with_name("q.state.records"), p.with_name("r.state.records"))
    with pytest.raises(AccumulatorStateError, match="another accumulator"):
        RoundAccumulator.load(p, TINY)


def test_records_with_fewer_rows_than_the_state_counts_are_refused(tmp_path: Path) -> None:
    p = _saved(tmp_path, "r.state", ["a", "b"])
    with sqlite3.connect(p.with_name("r.state.records")) as db:
        db.execute("DELETE FROM records WHERE update_id = 'b'")
    with pytest.raises(AccumulatorStateError, match="holds 1 update"):
        RoundAccumulator.load(p, TINY)


def test_a_garbage_records_file_is_refused(tmp_path: Path) -> None:
    p = _saved(tmp_path, "r.state", ["a"])
    p.with_name("r.state.records").write_bytes(b"not a database" * 100)
    with pytest.raises(AccumulatorStateError, match="unreadable"):
        RoundAccumulator.load(p, TINY)


def test_a_state_file_from_before_the_journal_still_loads(tmp_path: Path) -> None:
    acc_sum = np.array([2.0, 4.0, 6.0, 8.0])
    meta = {"spec": TINY.to_dict(), "weight_sum": 2.0,
            "records": [{"update_id": "old-1", "weight": 1.0, "scale": 1.0, "distance": None, "norm": 1.5},
                        {"update_id": "old-2", "weight": 1.0, "scale": 1.0, "distance": 0.5, "norm": 1.0}]}
    save_state(tmp_path / "old.state", "round-accumulator", meta, {"acc": acc_sum})
    acc = RoundAccumulator.load(tmp_path / "old.state", TINY)
    assert acc.accepted_ids == ["old-1", "old-2"] and "old-2" in acc and acc.distance_stats() == (1, 0.5, 0.0)
    acc.fold("new", {"w": np.zeros(4, np.float32)}, 2)
    acc.save(tmp_path / "old.state")
    meta2, _ = load_state(tmp_path / "old.state", "round-accumulator")
    assert "records" not in meta2 and meta2["count"] == 3
    again = RoundAccumulator.load(tmp_path / "old.state", TINY)
    assert again.accepted_ids == ["old-1", "old-2", "new"]
    np.testing.assert_array_equal(again.finalize()["w"], (acc_sum / 4).astype(np.float32))


class _FailingCursor:
    """A cursor whose batch INSERT fails like a full disk; everything else passes through."""

    def __init__(self, real: sqlite3.Cursor) -> None:
        self.real = real

    def executemany(self, sql: str, rows: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_a_failed_journal_write_refuses_the_fold_and_loses_nothing(tmp_path: Path) -> None:
    acc = RoundAccumulator(TINY)
    one = {"w": np.ones(4, np.float32)}
    for i in range(64):  # one full batch, still in memory
        acc.fold(f"u{i}", one, 1.0)
    real = acc._journal._cur
    acc._journal._cur = _FailingCursor(real)  # type: ignore[assignment]
    with pytest.raises(AccumulatorStateError, match="disk is full"):
        acc.fold("u64", {"w": np.full(4, 100.0, np.float32)}, 1.0)
    assert acc.count == 64 and acc.weight_sum == 64 and "u64" not in acc
    np.testing.assert_array_equal(acc.weighted_sum(), np.full(4, 64.0))
    acc._journal._cur = real  # the disk has room again
    assert acc.fold("u64", one, 1.0) is True
    acc.save(tmp_path / "r.state")
    back = RoundAccumulator.load(tmp_path / "r.state", TINY)
    assert back.accepted_ids == [f"u{i}" for i in range(65)]
    np.testing.assert_array_equal(back.weighted_sum(), np.full(4, 65.0))
