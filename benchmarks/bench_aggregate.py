"""Aggregation time and peak extra memory: edgepack streaming FedAvg vs Flower vs a bare numpy loop.

Each (case, method) runs in a fresh subprocess so peak-memory figures do not
leak between methods. Updates are float32, generated on the fly into a reused
buffer (generation is not timed) for the streaming methods; Flower's functions
need every payload in RAM at once, so for them all N payloads are built first
(reported separately as "payloads held") and only the aggregation call is timed.

Memory: ``extra`` is the process's peak RSS during aggregation (VmHWM, reset via
/proc/self/clear_refs just before) minus its RSS just before, i.e. what the
aggregation itself added on top of its inputs. tracemalloc's peak (numpy reports
its buffers to it) is printed too. One-time process costs are setup, like the
imports: the generator's first numpy call, and for edgepack one 4-parameter fold
(SQLite, which holds the fold records, loads its code and global state once per
process). The edgepack row also runs once without that warm-up ("cold process").

Time is the best of ``--repeats`` runs (the median is printed beside it), taken round-robin across
the methods (each run a fresh process), so load changes on the shared machine hit every method
alike; memory is from the first run.

Usage (Flower methods need the flwr venv; see docs/federated.md):
    .venv-flwr/bin/python benchmarks/bench_aggregate.py --cases 100x10000000,1000x1000000
    .venv-flwr/bin/python benchmarks/bench_aggregate.py --cases 20x1000000 --methods edgepack,bare_f64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np

METHODS = ["edgepack", "bare_f64", "bare_f32", "flower_aggregate", "flower_aggregate_inplace"]


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def updates(n: int, p: int, base: np.ndarray | None = None, buf: np.ndarray | None = None
            ) -> Iterator[tuple[np.ndarray, int]]:
    """N float32 updates of P params, each a cheap deterministic variant of one random vector, in one buffer."""
    base = np.random.default_rng(0).standard_normal(p, dtype=np.float32) if base is None else base
    buf = np.empty_like(base) if buf is None else buf
    for i in range(n):
        np.multiply(base, np.float32(1.0 + 0.001 * i), out=buf)
        yield buf, 10 + (i % 7)


def reference_mean(n: int, p: int) -> np.ndarray:
    """The exact weighted mean, by algebra: base * sum(w_i c_i) / sum(w_i), in float64."""
    base = np.random.default_rng(0).standard_normal(p, dtype=np.float32)
    ws = np.array([10 + (i % 7) for i in range(n)], np.float64)
    cs = np.array([np.float32(1.0 + 0.001 * i) for i in range(n)], np.float64)
    return base.astype(np.float64) * float((ws * cs).sum() / ws.sum())


def run_streaming(n: int, p: int, method: str, base: np.ndarray, buf: np.ndarray
                  ) -> tuple[float, Callable[[], np.ndarray]]:
    if method == "edgepack":
        from edgepack.federated import ParamSpec, RoundAccumulator
        from edgepack.federated._params import TensorSpec

        acc = RoundAccumulator(ParamSpec((TensorSpec("w", (p,), "float32"),)))
        fold = lambda i, x, w: acc.fold(str(i), {"w": x}, w)  # noqa: E731
        finish = lambda: acc.finalize()["w"]  # noqa: E731
    else:
        dt = np.float64 if method == "bare_f64" else np.float32
        a = np.zeros(p, dt)
        tot = [0.0]

        def fold(i: int, x: np.ndarray, w: float) -> None:
            nonlocal a
            a += w * x
            tot[0] += w

        finish = lambda: (a / tot[0]).astype(np.float32)  # noqa: E731
    t = 0.0
    for i, (x, w) in enumerate(updates(n, p, base, buf)):
        t0 = time.perf_counter()
        fold(i, x, w)
        t += time.perf_counter() - t0
    t0 = time.perf_counter()
    out = finish()
    t += time.perf_counter() - t0
    return t, lambda: out


def warm_up_edgepack() -> None:
    """Fold one 4-parameter update: SQLite's code and global state load once per process (~0.6 MB)."""
    from edgepack.federated import ParamSpec, RoundAccumulator
    from edgepack.federated._params import TensorSpec

    acc = RoundAccumulator(ParamSpec((TensorSpec("w", (4,), "float32"),)))
    acc.fold("warm-up", {"w": np.ones(4, np.float32)}, 1.0)
    acc.finalize()


def run_one(n: int, p: int, method: str, mode: str, repeats: int = 3) -> dict:
    """One measurement. In mode ``trace``, tracemalloc is on (it slows Python-level code), so only its
    memory figure is used from that run; times and RSS come from the ``time`` run. Mode ``cold``
    skips edgepack's warm-up, to show what the first accumulator of a process costs."""
    import edgepack.federated  # noqa: F401  (imports are setup, not aggregation memory)

    trace = mode == "trace"
    payload_bytes = 0
    base = np.random.default_rng(0).standard_normal(p, dtype=np.float32)
    buf = np.zeros_like(base)
    buf[:] = 1.0  # touch the pages now, so the baseline RSS already holds the generator's buffer
    np.multiply(base, np.float32(1.0), out=buf)  # numpy's first such call allocates 64 KB: the generator's, not ours
    if method == "edgepack" and mode != "cold":
        warm_up_edgepack()
    if method.startswith("flower"):
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.server.strategy.aggregate import aggregate, aggregate_inplace

        if method == "flower_aggregate":
            results = [([x.copy()], w) for x, w in updates(n, p, base, buf)]
            call = lambda: aggregate(results)[0]  # noqa: E731
        else:
            results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([x]), w, {}))
                       for x, w in updates(n, p, base, buf)]
            call = lambda: aggregate_inplace(results)[0]  # type: ignore[arg-type]  # noqa: E731
        payload_bytes = n * p * 4
    # Setup (imports, generator's base vector + buffer, Flower's payloads) is in the baseline.
    if trace:
        tracemalloc.start()
    base_rss = rss()
    reset_hwm()
    if method.startswith("flower"):
        t0 = time.perf_counter()
        out = call()
        elapsed = time.perf_counter() - t0
    else:
        elapsed, get = run_streaming(n, p, method, base, buf)
        out = get()
    peak_rss = hwm() - base_rss
    # The machine is shared: time is the best of `repeats` runs (memory is from the first).
    for _ in range(repeats - 1 if not trace else 0):
        if method.startswith("flower"):
            t0 = time.perf_counter()
            call()
            elapsed = min(elapsed, time.perf_counter() - t0)
        else:
            elapsed = min(elapsed, run_streaming(n, p, method, base, buf)[0])
    tm_peak = tracemalloc.get_traced_memory()[1] if trace else -1
    tracemalloc.stop()
    err = float(np.abs(out.astype(np.float64) - reference_mean(n, p)).max())
    model = p * 4
    return {"method": method, "n": n, "p": p, "seconds": elapsed, "updates_per_s": n / elapsed,
            "extra_rss_bytes": peak_rss, "extra_rss_x_model": peak_rss / model,
            "tracemalloc_peak_bytes": tm_peak, "tracemalloc_x_model": tm_peak / model,
            "payloads_held_bytes": payload_bytes, "max_abs_err_vs_float64": err}


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _run_child(n: int, p: int, method: str, mode: str) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--one", f"{n}:{p}:{method}:{mode}", "--repeats", "1"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="100x10000000,1000x1000000", help="comma-separated NxP")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write results to this file")
    ap.add_argument("--repeats", type=int, default=3, help="time = best of this many runs (default 3)")
    ap.add_argument("--mem-headroom", type=float, default=3.0,
                    help="skip a Flower case unless MemAvailable >= headroom x its payloads (default 3)")
    args = ap.parse_args()
    if args.one:
        n, p, method, trace = args.one.split(":")
        print(json.dumps(run_one(int(n), int(p), method, trace, args.repeats)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    rows = []
    for case in args.cases.split(","):
        n, p = (int(v) for v in case.lower().split("x"))
        methods = []
        for method in args.methods.split(","):
            if method.startswith("flower") and available_bytes() < args.mem_headroom * n * p * 4:
                print(f"{case:>14} {method:<26} skipped: MemAvailable {available_bytes() / 2**30:.1f} GiB "
                      f"< {args.mem_headroom} x payloads {n * p * 4 / 2**30:.1f} GiB")
            else:
                methods.append(method)
        # Round-robin: repeat r of every method runs before repeat r + 1 of any, each in a fresh
        # process, so a change in the machine's load hits every method alike (it is shared).
        best: dict[str, dict] = {}
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for method in methods:
                one = _run_child(n, p, method, "time")
                if one is None:
                    print(f"{case:>14} {method:<26} FAILED")
                    continue
                times.setdefault(method, []).append(one["seconds"])
                if method not in best or one["seconds"] < best[method]["seconds"]:
                    # memory stays from the first run; time is the best over the rounds
                    first = best.get(method, one)
                    best[method] = dict(first, seconds=one["seconds"], updates_per_s=one["updates_per_s"])
        for method in methods:
            traced = _run_child(n, p, method, "trace")
            if method not in best or traced is None:
                continue
            r = dict(best[method], tracemalloc_peak_bytes=traced["tracemalloc_peak_bytes"],
                     tracemalloc_x_model=traced["tracemalloc_x_model"], seconds_all=times[method],
                     median_seconds=float(np.median(times[method])))
            if method == "edgepack":
                cold = _run_child(n, p, method, "cold")
                r["cold_extra_rss_bytes"] = cold["extra_rss_bytes"] if cold else None
            rows.append(r)
            print(f"{case:>14} {method:<26} {r['seconds']:8.2f} s (median {r['median_seconds']:5.2f})  "
                  f"{r['updates_per_s']:8.1f} upd/s  "
                  f"extra RSS {r['extra_rss_bytes'] / 2**20:9.1f} MiB ({r['extra_rss_x_model']:6.2f}x model)  "
                  f"tracemalloc {r['tracemalloc_x_model']:6.2f}x  payloads {r['payloads_held_bytes'] / 2**30:5.2f} GiB"
                  f"  err {r['max_abs_err_vs_float64']:.1e}", flush=True)
            if r.get("cold_extra_rss_bytes"):
                c = r["cold_extra_rss_bytes"]
                print(f"{case:>14} {'edgepack, cold process':<26} extra RSS {c / 2**20:9.1f} MiB "
                      f"({c / (4 * p):6.2f}x model): the first accumulator of a process also loads SQLite")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
