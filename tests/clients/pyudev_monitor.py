"""A libudev "udev" monitor as applications write one: Debian's python3-pyudev over libudev1.

Run by Debian's /usr/bin/python3 (not our venv, nothing of ours imported) inside the test's
network namespace, usually as ``nobody``:

    pyudev_monitor.py MARKS [subsystem:NAME | tag:NAME]...

Each filter is added with pyudev's ``filter_by`` / ``filter_by_tag``, so libudev installs its
socket filter (BPF on the subsystem hash and the tag bloom filter of the ``libudev`` header)
before the socket is bound. Prints ``READY`` once listening, then one JSON line per event: its
keys, whether libudev calls it initialized, and whether the file MARKS/SEQNUM (written by the
test's hotplug program) existed when the event arrived.
"""

import json
import os
import sys

import pyudev


def main() -> None:
    marks = sys.argv[1]
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    for spec in sys.argv[2:]:
        kind, _, name = spec.partition(":")
        if kind == "subsystem":
            monitor.filter_by(name)
        else:
            monitor.filter_by_tag(name)
    monitor.start()
    print("READY", flush=True)
    for device in iter(monitor.poll, None):
        props = dict(device.properties)
        line = {
            "properties": props,
            "initialized": device.is_initialized,
            "marked": os.path.exists(os.path.join(marks, props.get("SEQNUM", "-"))),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
