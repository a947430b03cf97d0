"""Run a command where ``pidfd_open`` fails with ENOSYS, as on a kernel before 5.3.

``python tests/support/seccomp.py COMMAND...`` installs a seccomp filter (inherited across exec
and by every child) that answers syscall 434, pidfd_open, with ENOSYS, then execs COMMAND. The
kernel really refuses the call: nothing in the program under test is replaced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

PIDFD_OPEN = 434  # the same number on every architecture
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06


class SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter)))


def deny_pidfd_open() -> None:
    """Make pidfd_open fail with ENOSYS in this process and everything it starts (needs root)."""
    program = (SockFilter * 4)(
        SockFilter(BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
        SockFilter(BPF_JEQ_K, 0, 1, PIDFD_OPEN),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    )
    fprog = SockFprog(len(program), program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp filter: {os.strerror(code)}")


if __name__ == "__main__":
    deny_pidfd_open()
    os.execvp(sys.argv[1], sys.argv[1:])
