"""A cheap load generator for signed check-ins: pre-signed requests, sent by wrk (or a Python fallback).

Signing costs the client about 0.05 ms of CPU per request and Python's http.client
another 0.5 ms; on a 2-core machine that CPU is taken from the server being measured.
So every request is signed *before* the timed phase (fresh nonce, timestamp inside the
server's accepted window), written as raw HTTP/1.1 bytes, and the timed phase only
sends them: Debian's ``wrk`` (C, epoll, keep-alive) reads them through a small Lua
script, one file per wrk thread. Each request is used once, so a replay is never sent;
if the requests run out before the deadline a thread stops early (and says so).

Without ``/usr/bin/wrk`` (``apt-get install wrk``, or ``make system-deps``) the
fallback is a Python keep-alive client on raw sockets in ``--procs`` processes,
which costs more client CPU; the summary reports the client's CPU either way.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgepack import SigningKey
from edgepack._device_auth import sign_request

__all__ = ["HB_BODY", "WRK", "presign_heartbeats", "run_python", "run_wrk"]

WRK = shutil.which("wrk")
HB_BODY = b'{"active_version": 1, "state": {"charging": true, "idle": true, "wifi": true}}'

_LUA = r"""
local counter, threads = 0, {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local f = assert(io.open(args[1] .. "/req-" .. id .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  reqs, i, ran_out, non200 = {}, 0, 0, 0
  for r in string.gmatch(data, "([^%z]+)") do reqs[#reqs + 1] = r end
end
function request()
  i = i + 1
  if i > #reqs then
    ran_out = 1
    wrk.thread:stop()
    i = #reqs  -- this one is a replay: the server must refuse it (counted as non-2xx)
  end
  return reqs[i]
end
function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end
function done(summary, latency, requests)
  local out, non = 0, 0
  for _, t in ipairs(threads) do
    out = out + (t:get("ran_out") or 0)
    non = non + (t:get("non200") or 0)
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors_connect": %d, "errors_read": %d, ' ..
    '"errors_write": %d, "errors_status": %d, "errors_timeout": %d, "non200": %d, "ran_out_threads": %d, ' ..
    '"p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, non, out,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def _key(seed: bytes) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


def _raw(did: str, key: SigningKey, port: int, now: float) -> bytes:
    path = f"/api/v1/devices/{did}/heartbeat"
    h = sign_request(key, did, "POST", path, HB_BODY, now=now)
    head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(HB_BODY)}\r\n{head}\r\n").encode() + HB_BODY


def presign_heartbeats(devices: list[tuple[str, str]], n: int, parts: int, port: int,
                       out_dir: Path) -> tuple[int, float]:
    """Write ``n`` signed heartbeats (devices cycled) as ``parts`` files ``req-<i>.bin``; return (n, seconds).

    The timestamp is the current second: the server accepts ``max_skew_s`` (300 s) either
    side, so the requests stay valid for the whole (much shorter) timed phase.
    """
    t0 = time.perf_counter()
    keys = [(did, _key(bytes.fromhex(seed))) for did, seed in devices]
    now = time.time()
    files = [open(out_dir / f"req-{i}.bin", "wb") for i in range(parts)]  # noqa: SIM115
    try:
        for j in range(n):
            did, key = keys[j % len(keys)]
            files[j % parts].write(_raw(did, key, port, now) + b"\0")
    finally:
        for f in files:
            f.close()
    return n, time.perf_counter() - t0


def run_wrk(port: int, req_dir: Path, threads: int, connections: int, seconds: float) -> dict[str, Any]:
    """Run wrk against the pre-signed requests; return its summary plus its own CPU seconds."""
    script = req_dir / "presigned.lua"
    script.write_text(_LUA)
    cmd = [str(WRK), "-t", str(threads), "-c", str(connections), "-d", f"{int(seconds)}s", "--timeout", "5s",
           "-s", str(script), f"http://127.0.0.1:{port}", "--", str(req_dir)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode(errors="replace") if p.stdout else ""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out[-2000:]}")
    res = json.loads(line[len("WRK_JSON "):])
    res["client"] = "wrk"
    res["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    res["wall_s"] = res["duration_us"] / 1e6
    return res


# ---- Python fallback: raw keep-alive sockets, one process per part ----------------------------
def _send_part(args: tuple[int, str, float, int]) -> tuple[list[float], int, float]:
    port, path, deadline, conns = args
    reqs = [r for r in Path(path).read_bytes().split(b"\0") if r]
    c0 = time.process_time()
    lat: list[float] = []
    bad = 0
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    it = iter(reqs)
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # one request in flight per socket, round-robin: a closed loop like wrk's
    import selectors

    sel = selectors.DefaultSelector()
    start: dict[socket.socket, float] = {}
    buf: dict[socket.socket, bytes] = {}

    def send(s: socket.socket) -> bool:
        r = next(it, None)
        if r is None or time.perf_counter() >= deadline:
            return False
        start[s], buf[s] = time.perf_counter(), b""
        s.sendall(r)
        return True

    for s in socks:
        if send(s):
            sel.register(s, selectors.EVENT_READ)
    while sel.get_map():
        for k, _ in sel.select(timeout=5):
            s = k.fileobj
            buf[s] += s.recv(65536)  # type: ignore[operator]
            head, sep, rest = buf[s].partition(b"\r\n\r\n")
            if not sep:
                continue
            clen = next((int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")),
                        0)
            if len(rest) < clen:
                continue
            lat.append(time.perf_counter() - start[s])
            bad += not head.startswith(b"HTTP/1.1 200")
            if not send(s):  # type: ignore[arg-type]
                sel.unregister(s)
    for s in socks:
        s.close()
    return lat, bad, time.process_time() - c0


def run_python(port: int, req_dir: Path, parts: int, connections: int, seconds: float) -> dict[str, Any]:
    """The fallback client: ``parts`` processes, ``connections`` keep-alive sockets in total."""
    deadline = time.perf_counter() + seconds
    per = max(1, connections // parts)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(parts) as pool:
        res = pool.map(_send_part, [(port, str(req_dir / f"req-{i}.bin"), deadline, per) for i in range(parts)])
    wall = time.perf_counter() - t0
    lat = sorted(x for r in res for x in r[0])

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 2) if lat else float("nan")

    return {"client": "python", "requests": len(lat), "wall_s": wall, "non200": sum(r[1] for r in res),
            "errors_connect": 0, "errors_read": 0, "errors_write": 0, "errors_timeout": 0, "ran_out_threads": 0,
            "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": round(lat[-1] * 1000, 2),
            "client_cpu_s": sum(r[2] for r in res)}


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="checkin-reqs-"))
