"""Print the socket filter libudev1 builds for some matches: its constants are libudev's own
MurmurHash2 of each subsystem and devtype, and the bloom words of each tag.

Run by Debian's /usr/bin/python3 with python3-pyudev:

    libudev_filter.py [subsystem:NAME[/DEVTYPE] | tag:NAME]...

Reads the classic BPF program back with getsockopt(SO_GET_FILTER), whose length is counted in
instructions (hence ctypes: Python's getsockopt counts bytes). Prints one JSON list of the
``k`` operands of its conditional jumps, in program order.
"""

import ctypes
import json
import socket
import struct
import sys

import pyudev

SO_GET_FILTER = 26  # = SO_ATTACH_FILTER
BPF_JMP = 0x05
INSTRUCTION = struct.Struct("HBBI")  # struct sock_filter: code, jt, jf, k
MAX = 512


def main() -> None:
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    for spec in sys.argv[1:]:
        kind, _, name = spec.partition(":")
        if kind == "subsystem":
            subsystem, _, devtype = name.partition("/")
            monitor.filter_by(subsystem, device_type=devtype or None)
        else:
            monitor.filter_by_tag(name)
    libc = ctypes.CDLL(None, use_errno=True)
    count = ctypes.c_uint(MAX)
    buf = ctypes.create_string_buffer(MAX * INSTRUCTION.size)
    fd = monitor.fileno()
    if libc.getsockopt(fd, socket.SOL_SOCKET, SO_GET_FILTER, buf, ctypes.byref(count)):
        raise OSError(ctypes.get_errno(), "getsockopt(SO_GET_FILTER)")
    program = INSTRUCTION.iter_unpack(buf.raw[: count.value * INSTRUCTION.size])
    print(json.dumps([k for code, _jt, _jf, k in program if code & 0x07 == BPF_JMP]))


if __name__ == "__main__":
    main()
