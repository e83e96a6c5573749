"""A TCP proxy on 127.0.0.1 that can slow down or cut TUF target downloads, so a test
can kill a device agent (or drop its link) in the middle of one."""

from __future__ import annotations

import socket
import threading
import time


class TargetProxy:
    """Forward TCP to ``upstream``. Responses to ``GET /tuf/targets/...`` are sent at most
    ``throttle_bps`` bytes per second (if set) and cut after ``cut_after`` bytes (once)."""

    def __init__(self, upstream: tuple[str, int], *, throttle_bps: float | None = None) -> None:
        self.upstream, self.throttle_bps = upstream, throttle_bps
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.cut_after: int | None = None
        self.target_requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            with client, socket.create_connection(self.upstream, timeout=10) as up:
                client.settimeout(10)
                head = client.recv(65536)
                up.sendall(head)
                limit, slow = None, False
                if b" /tuf/targets/" in head.split(b"\r\n", 1)[0]:
                    self.target_requests.append(head)
                    limit, self.cut_after = self.cut_after, None
                    slow = self.throttle_bps is not None
                threading.Thread(target=self._pump, args=(client, up), daemon=True).start()
                sent = 0
                while not self._stop.is_set():
                    data = up.recv(16384 if slow else 65536)
                    if not data:
                        return
                    if limit is not None and sent + len(data) >= limit:
                        client.sendall(data[: limit - sent])
                        client.shutdown(socket.SHUT_RDWR)  # the link drops mid-body
                        return
                    client.sendall(data)
                    sent += len(data)
                    if slow:
                        time.sleep(len(data) / self.throttle_bps)  # type: ignore[operator]
        except OSError:
            return  # the client (a killed agent) or the server went away

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Forward the rest of the request (a POST body may follow its headers)."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)
