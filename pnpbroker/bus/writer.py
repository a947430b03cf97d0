"""The sending side of the broker's bus connection, owned by us (as jeepney's is by its user).

dbus-fast's own writer treats ``EAGAIN`` from a full socket as a fatal error and drops the
connection (python-dbus-next issue 153), and it gives no way to know how much is waiting.
:class:`Writer` takes its place on the connection (``MessageBus._writer``): dbus-fast still
hands it every message it sends (method returns, errors, calls, PropertiesChanged) through
``schedule_write``, and the link hands it the publish queue's signals as ready-made bytes
through :meth:`Writer.write`. Both go into one queue, in order:

- bytes go straight to the socket while it takes them (one ``send`` a batch);
- what it does not take waits, and the loop says when the socket is writable again: then as
  much of the queue as fits goes in one ``sendmsg`` (``EAGAIN`` means "wait", never an error);
- :attr:`Writer.unsent` is how many bytes wait, and :meth:`Writer.drained` returns once they
  are fewer than a low-water mark: the publish queue's flow control is the socket's own.

Any other error on the socket ends the connection as dbus-fast's writer would
(``MessageBus._finalize``): what waits is dropped, and each waiting future fails.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any

from dbus_fast import Message
from dbus_fast.aio import MessageBus

#: Buffers handed to one ``sendmsg`` at most (the kernel takes up to IOV_MAX = 1024).
_IOV = 256
#: :meth:`Writer.drained` returns once fewer bytes than this wait.
LOW_WATER = 64 * 1024


class Writer:
    """Queues bytes for the bus socket, in order; never fails on a full socket."""

    def __init__(self, bus: MessageBus) -> None:
        assert bus._sock is not None, "connect() first"
        assert bus._fd is not None, "connect() first"
        self.bus = bus
        self.sock: socket.socket = bus._sock
        self.fd: int = bus._fd
        self.loop = bus._loop
        #: What waits for the socket, oldest first.
        self.chunks: deque[memoryview] = deque()
        #: Bytes waiting.
        self.unsent = 0
        #: Bytes queued since the start, and of those, written: a future resolves once
        #: ``written`` reaches the position it was queued at.
        self.queued = self.written = 0
        self._futures: deque[tuple[int, asyncio.Future[Any]]] = deque()
        self._drained: asyncio.Future[None] | None = None
        self._watching = False
        self._error: Exception | None = None
        self._closed = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        self._closed.add_done_callback(self._on_closed)

    # What dbus-fast calls (its _MessageWriter's interface).
    def schedule_write(
        self, msg: Message | None = None, future: asyncio.Future[Any] | None = None
    ) -> None:
        """Queue one of dbus-fast's messages (None: nothing new, write what waits). On a
        connection that is gone, its future fails (dbus-fast's writer does the same)."""
        if msg is None:
            return
        if msg.unix_fds:  # never negotiated: the broker passes no descriptors
            raise ValueError("the broker's connection does not pass file descriptors")
        try:
            self.write(msg._marshall(False), future)
        except ConnectionError as exc:
            if future is not None and not future.done():
                future.set_exception(exc)

    # Ours.
    def write(self, data: bytes | bytearray, future: asyncio.Future[Any] | None = None) -> None:
        """Queue ``data`` (whole messages) after what waits; ``future`` resolves once written.
        ConnectionError if the connection is gone."""
        if self._error is not None:
            raise ConnectionResetError(f"the bus connection is gone: {self._error}")
        self.queued += len(data)
        if future is not None:
            self._futures.append((self.queued, future))
        if self.chunks:
            self.chunks.append(memoryview(data))
            self.unsent += len(data)
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        self._wrote(sent)
        if sent < len(data):
            self.chunks.append(memoryview(data)[sent:])
            self.unsent += len(data) - sent
            self._watch()

    async def drained(self) -> None:
        """Return once fewer than LOW_WATER bytes wait; ConnectionError if the connection
        fails first."""
        while self.unsent >= LOW_WATER and self._error is None:
            if self._drained is None or self._drained.done():
                self._drained = self.loop.create_future()
            await asyncio.shield(self._drained)
        if self._error is not None:
            raise ConnectionResetError(f"the bus connection is gone: {self._error}")

    def _watch(self) -> None:
        if not self._watching:
            self.loop.add_writer(self.fd, self._on_writable)
            self._watching = True

    def _on_writable(self) -> None:
        chunks = self.chunks
        while chunks:
            batch = [chunks[i] for i in range(min(_IOV, len(chunks)))]
            try:
                sent = self.sock.sendmsg(batch)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(exc)
                return
            self.unsent -= sent
            self._wrote(sent)
            while sent:
                head = chunks[0]
                if sent < len(head):
                    chunks[0] = head[sent:]
                    break
                sent -= len(head)
                chunks.popleft()
            if chunks:
                break  # the socket is full again: wait for writable
        if not chunks:
            self.loop.remove_writer(self.fd)
            self._watching = False
        if self.unsent < LOW_WATER:
            self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wrote(self, count: int) -> None:
        self.written += count
        futures = self._futures
        while futures and futures[0][0] <= self.written:
            future = futures.popleft()[1]
            if not future.done():
                future.set_result(None)

    def _on_closed(self, closed: asyncio.Future[None]) -> None:
        """The connection ended (its reader saw the end, or someone disconnected it)."""
        error = None if closed.cancelled() else closed.exception()
        self._stop(error if isinstance(error, Exception) else ConnectionResetError("disconnected"))

    def _fail(self, exc: Exception) -> None:
        """The socket failed: end the connection as dbus-fast's writer does."""
        self._stop(exc)
        self.bus._finalize(exc)

    def _stop(self, exc: Exception) -> None:
        """Nothing more is written: what waits is dropped, whoever waits is told."""
        if self._error is not None:
            return
        self._error = exc
        self.chunks.clear()
        self.unsent = 0
        for _, future in self._futures:
            if not future.done():
                future.set_exception(exc)
        self._futures.clear()
        self._wake()
        self._watching = False  # dbus-fast's _finalize removes the loop's writer for the fd
