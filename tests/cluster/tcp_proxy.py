"""A TCP proxy for partition tests: put it between a node and etcd (or its peers), then
``cut()`` to drop every connection and refuse new ones, ``heal()`` to let traffic through
again. Threads, not Trio: the tests drive real server processes from plain pytest.

Network namespaces with iptables would cut at the packet level, but need root and leave
state behind when a test dies; a proxy gives the same outcome at the socket level (a
peer that cannot connect or whose connection is reset) wherever the tests run.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.support.server import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.is_cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every connection through the proxy and refuse new ones."""
        with self._lock:
            self.is_cut = True
            conns, self._open = self._open, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                # Linger on for 0 s: the close sends a reset, as a cut link looks.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    def heal(self) -> None:
        """Let new connections through again."""
        with self._lock:
            self.is_cut = False

    def close(self) -> None:
        """Stop the proxy."""
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self.is_cut
            if refused:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
