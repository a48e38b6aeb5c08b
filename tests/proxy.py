"""A TCP forwarder between a worker and PostgreSQL (or Redis) that a test can cut and restore.

Stopping it makes the database unreachable for the worker exactly as a server outage
does (connections reset, new ones refused), without stopping the server the test
process itself uses.

``cut_at_commit`` arms a finer fault: the connection whose transaction carried a marker
(a key the test chose) is cut when the client sends ``COMMIT`` (PostgreSQL's simple-query
message), either after forwarding it and receiving the server's answer, which is dropped
(the commit happened, the client cannot know), or before forwarding it (it did not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

# PostgreSQL's simple-query message for COMMIT: 'Q', int32 length, the text, NUL.
COMMIT_MESSAGE = b"Q" + struct.pack("!i", 4 + len(b"COMMIT\x00")) + b"COMMIT\x00"


@dataclasses.dataclass
class _CommitCut:
    marker: bytes
    forward: bool  # send the COMMIT to the server (it commits) before cutting
    then_stop: bool  # also stop the proxy: the client cannot reconnect to check
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    marked: bool = False  # the marker went through this connection
    answer_cut: _CommitCut | None = None  # the COMMIT went through: drop the server's answer


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._commit_cut: _CommitCut | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed: the proxy is stopped
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            link = _Link(client, upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, link), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                armed = self._commit_cut is not None or link.answer_cut is not None
                if armed and self._cut_here(source, data, link):
                    return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut_at_commit(
        self, marker: bytes, *, forward: bool = True, then_stop: bool = False
    ) -> threading.Event:
        """Cut, once, the connection that carried ``marker`` when it sends COMMIT.

        ``forward=True``: the server receives the COMMIT and answers; the answer is
        dropped and the client's connection reset. ``forward=False``: the connection is
        reset before the server sees the COMMIT. ``then_stop``: the proxy stops too.
        Returns an event set when the cut happened.
        """
        self._commit_cut = _CommitCut(marker, forward, then_stop)
        return self._commit_cut.done

    def _cut_here(self, source: socket.socket, data: bytes, link: _Link) -> bool:
        """Whether this chunk triggers the armed cut (then the link is handled here)."""
        if source is link.upstream:
            if link.answer_cut is None:
                return False
            self._reset(link, link.answer_cut)  # the server committed; the client never hears so
            return True
        cut = self._commit_cut
        if cut is None:
            return False
        link.marked = link.marked or cut.marker in data
        if not (link.marked and COMMIT_MESSAGE in data):
            return False
        with self._lock:
            if self._commit_cut is not cut:
                return False  # another connection took this cut
            self._commit_cut = None
        if not cut.forward:
            self._reset(link, cut)
            return True
        link.answer_cut = cut
        return False  # forwarded by the caller; the server's answer triggers the reset

    def _reset(self, link: _Link, cut: _CommitCut) -> None:
        # SO_LINGER 0: close() sends RST, as a dead server or a cut network does.
        # SHUT_RD wakes the thread reading the client without sending anything.
        with contextlib.suppress(OSError):
            link.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            link.client.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            link.upstream.shutdown(socket.SHUT_RDWR)
        for sock in (link.client, link.upstream):
            sock.close()
        if cut.then_stop:
            self.stop()
        cut.done.set()

    def stop(self) -> None:
        """Refuse new connections and reset every open one."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def broker_through(proxy: TcpProxy) -> str:
    """The suite's broker URL (``CELERY_BROKER_URL``), through ``proxy``."""
    from django.conf import settings

    parts = urlsplit(settings.CELERY_BROKER_URL)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
