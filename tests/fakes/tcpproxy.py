"""A TCP forwarder on 127.0.0.1 that can be cut and restored: a network between a
client and a real server (PostgreSQL) that goes away and comes back.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://u:p@127.0.0.1:{proxy.port}/db"
        proxy.cut()      # open connections are closed; new ones are closed at once
        proxy.restore()  # new connections are forwarded again
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._down = False
        self._open: set[socket.socket] = set()
        self._mu = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._mu:
                if self._down:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._mu:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._mu:
            self._open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        with self._mu:
            self._down = True
            sockets = list(self._open)
        for s in sockets:
            self._close(s)

    def restore(self) -> None:
        with self._mu:
            self._down = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
