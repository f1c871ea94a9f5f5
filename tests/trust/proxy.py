"""A loopback TCP proxy in front of a real server that a test can switch to stall or to a closed port."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Literal

Mode = Literal["forward", "stall", "closed"]
LOOPBACK = "127.0.0.1"


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a real server; `stall` and `closed` are the faults it makes.

    forward: bytes flow both ways. stall: new connections are accepted and everything stays open,
    but no byte is forwarded in either direction (the kernel still acknowledges what clients
    send, as a hung server's does). closed: the port is closed and every connection reset.
    Switching back to forward resumes the stalled connections and reopens the same port.
    """

    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "forward"
        self.port = 0
        self._listener: socket.socket | None = self._listen()
        self.port = self._listener.getsockname()[1]
        self._peers: dict[socket.socket, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._wanted: Mode = "forward"
        self._applied = threading.Event()
        self._stopped = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()

    def _listen(self) -> socket.socket:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, self.port))
        server.listen(64)
        return server

    def set(self, mode: Mode) -> None:
        """Switch to `mode`; returns once the proxy's thread has applied it."""
        with self._lock:
            self._wanted = mode
            self._applied.clear()
        self._wake_w.send(b"x")
        assert self._applied.wait(5), "the proxy did not switch"

    def close(self) -> None:
        """Stop the proxy and close every socket."""
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(OSError):
                s.close()

    def _apply(self) -> None:
        with self._lock:
            wanted = self._wanted
        if wanted == "closed":
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in list(self._peers):
                with contextlib.suppress(OSError):
                    # RST rather than FIN: a port that closed under the client.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self._drop(sock)
        elif self._listener is None:
            self._listener = self._listen()
        self.mode = wanted
        self._applied.set()

    def _accept(self, listener: socket.socket) -> None:
        client, _ = listener.accept()
        self.accepted += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._peers[client] = upstream
        self._peers[upstream] = client

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                self._peers[sock].sendall(data)
                return
        except (OSError, KeyError):
            pass
        self._drop(sock)

    def _serve(self) -> None:
        while not self._stopped:
            readable: list[socket.socket] = [self._wake_r]
            if self._listener is not None:
                readable.append(self._listener)
            if self.mode == "forward":
                readable.extend(self._peers)
            ready, _, _ = select.select(readable, [], [], 0.2)
            for sock in ready:
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                    self._apply()
                elif sock is self._listener:
                    self._accept(sock)
                elif sock in self._peers:
                    self._pump(sock)
        for sock in list(self._peers):
            self._drop(sock)
        if self._listener is not None:
            self._listener.close()
