"""A TCP proxy on 127.0.0.1 that can stop forwarding for a while: a stalling server.

    with StallingProxy(target_port) as proxy:   # proxy.endpoint: http://127.0.0.1:PORT
        proxy.stall(3.0)                        # no byte moves either way for 3 s

Every connection is forwarded to ``127.0.0.1:target_port`` by two threads
(one per direction); during a stall they hold what they read until it ends.
Stopped by its handle (the ``with`` block's end closes the listening socket
and every connection).
"""

from __future__ import annotations

import socket
import threading
import time

from tests.support.ports import free_port


class StallingProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stalled_until = 0.0
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self.forwarded_chunks = 0

    def stall(self, seconds: float) -> None:
        self._stalled_until = time.monotonic() + seconds

    def __enter__(self) -> StallingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                while time.monotonic() < self._stalled_until:
                    time.sleep(0.05)
                sink.sendall(chunk)
                self.forwarded_chunks += 1
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
