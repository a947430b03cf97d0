"""A FUSE file system whose reads never return: a process that really cannot be killed.

Once a FUSE server has taken a request, the kernel waits for its answer uninterruptibly
(fs/fuse/dev.c, ``request_wait_answer``: after a fatal signal, a request already in userspace is
waited for with ``wait_event``), so a process reading :attr:`StuckFS.file` sits in state D and
SIGKILL does nothing until the server answers. :meth:`StuckFS.release` answers every held read
with EIO: the processes then end. Raw ``/dev/fuse``, no libfuse: a thread answers INIT, LOOKUP,
GETATTR and OPEN (direct I/O, so a read is one synchronous request) and holds every READ.
Closing the device (or the test process dying) aborts the connection, which frees them too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

_IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
_OUT_HEADER = struct.Struct("<IiQ")  # len error unique
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # struct fuse_attr (88 bytes)
_ENTRY = struct.Struct("<QQQQII")  # fuse_entry_out before its attr
_ATTR_OUT = struct.Struct("<QII")  # fuse_attr_out before its attr
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")  # fuse_init_out (64 bytes)
LOOKUP, FORGET, GETATTR, OPEN, READ, RELEASE, FLUSH, INIT = 1, 2, 3, 14, 15, 18, 25, 26
INTERRUPT, BATCH_FORGET = 36, 42
_NO_REPLY = {FORGET, INTERRUPT, BATCH_FORGET}
FOPEN_DIRECT_IO = 1
ROOT, FILE = 1, 2
NAME = b"stuck"
MS_NOSUID, MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)


def _attr(node: int) -> bytes:
    if node == ROOT:
        mode, size, links = stat.S_IFDIR | 0o755, 0, 2
    else:
        mode, size, links = stat.S_IFREG | 0o444, 4096, 1
    return _ATTR.pack(node, size, 1, 0, 0, 0, 0, 0, 0, mode, links, 0, 0, 0, 4096, 0)


class StuckFS:
    """Mounted on a fresh directory; :attr:`file` blocks whoever reads it until released."""

    def __init__(self) -> None:
        self.mountpoint = Path(tempfile.mkdtemp(prefix="pnpt-fuse-"))
        self.file = self.mountpoint / NAME.decode()
        self.held: list[int] = []  # unique ids of the reads not answered
        self._cond = threading.Condition()
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0".encode()
        target = bytes(self.mountpoint)
        if _libc.mount(b"pnpt-stuck", target, b"fuse", MS_NOSUID | MS_NODEV, options) != 0:
            code = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(code, f"mount fuse on {self.mountpoint}: {os.strerror(code)}")
        self._thread = threading.Thread(target=self._serve, name="stuckfs", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                request = os.read(self._fd, 1 << 20)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return  # ENODEV: unmounted or aborted
            self._answer(request)

    def _answer(self, request: bytes) -> None:
        _, opcode, unique, node, *_ = _IN_HEADER.unpack_from(request)
        body = request[_IN_HEADER.size :]
        if opcode in _NO_REPLY:
            return
        if opcode == READ:
            with self._cond:
                self.held.append(unique)
                self._cond.notify_all()
            return
        if opcode == INIT:
            major, minor, readahead = struct.unpack_from("<III", body)
            reply = _INIT_OUT.pack(major, minor, readahead, 0, 16, 12, 4096, 1, 1, 0, 0, *[0] * 7)
            self._reply(unique, reply)
        elif opcode == LOOKUP and node == ROOT and body.rstrip(b"\0") == NAME:
            self._reply(unique, _ENTRY.pack(FILE, 0, 3600, 3600, 0, 0) + _attr(FILE))
        elif opcode == GETATTR and node in (ROOT, FILE):
            self._reply(unique, _ATTR_OUT.pack(3600, 0, 0) + _attr(node))
        elif opcode == OPEN and node == FILE:
            self._reply(unique, struct.pack("<QII", 1, FOPEN_DIRECT_IO, 0))
        elif opcode in (RELEASE, FLUSH):
            self._reply(unique, b"")
        else:
            self._reply(unique, b"", errno.ENOENT if opcode == LOOKUP else errno.ENOSYS)

    def _reply(self, unique: int, payload: bytes, error: int = 0) -> None:
        header = _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), -error, unique)
        try:
            os.write(self._fd, header + payload)
        except OSError as exc:  # ENOENT: interrupted meanwhile; ENODEV, EBADF: closed
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                raise

    def wait_held(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` reads have been taken and left unanswered (in all)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.held) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.held)} of {count} reads reached {self.file}")
                self._cond.wait(left)

    def release(self) -> None:
        """Answer every held read with EIO: the readers return (and die if they were killed)."""
        with self._cond:
            held, self.held = self.held, []
        for unique in held:
            self._reply(unique, b"", errno.EIO)

    def close(self) -> None:
        self.release()
        if _libc.umount2(bytes(self.mountpoint), 0) != 0:
            _libc.umount2(bytes(self.mountpoint), 2)  # MNT_DETACH: still busy
        self._thread.join(10)  # an unmount ends the connection: its read says ENODEV
        os.close(self._fd)  # aborts the connection if a lazy unmount left it alive
        os.rmdir(self.mountpoint)

    def __enter__(self) -> StuckFS:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def process_state(pid: int) -> str:
    """The state letter of ``pid`` (``D``: uninterruptible sleep); "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return ""
