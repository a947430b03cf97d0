"""``pnpbroker info DEVICE``: the broker's table entry for one device, as ``udevadm info``.

DEVICE is a devpath, a /sys path (links followed: ``/sys/class/net/lo``) or a device node
(``/dev/sda``), resolved in this machine's sysfs, then looked up with GetDevices: what is
printed is what the broker holds (the keys of the device's last event, or of its ``uevent``
file), not what sysfs says now.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pnpbroker.contract import ExitCode

HELP = "print the broker's table entry for a device (any user)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", metavar="DEVICE", help="a devpath, a /sys path or a /dev node")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")
    parser.add_argument("--sysfs", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)


def devpath_of(name: str, sysfs: Path) -> str:
    """The devpath ``name`` stands for; a devpath that sysfs no longer has is kept as it is."""
    from pnpbroker.coldplug import NoSuchDevice, find

    try:
        return find(sysfs, name).devpath
    except NoSuchDevice:
        if name.startswith("/devices/"):
            return name.rstrip("/")
        raise


def format_entry(devpath: str, subsystem: str, props: dict[str, str], sequence: int) -> str:
    """udevadm info's letters: P devpath, M name, U subsystem, T devtype, N node, Q the
    sequence of the event that set it (0: read from sysfs), E each key."""
    lines = [f"P: {devpath}", f"M: {devpath.rsplit('/', 1)[-1]}", f"U: {subsystem}"]
    if "DEVTYPE" in props:
        lines.append(f"T: {props['DEVTYPE']}")
    if "DEVNAME" in props:
        lines.append(f"N: {props['DEVNAME']}")
    lines.append(f"Q: {props.get('PNP_SEQUENCE', '0')} (table at {sequence})")
    lines += [f"E: {key}={value}" for key, value in props.items()]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """0 found, 1 not in the broker's table (or no such device, or not running), 111 no bus."""
    from pnpbroker.client import CallFailed, devices
    from pnpbroker.coldplug import NoSuchDevice

    try:
        devpath = devpath_of(args.device, args.sysfs)
        sequence, found = asyncio.run(devices(devpath=devpath, address=args.bus_address))
    except NoSuchDevice as exc:
        return _fail(str(exc), ExitCode.FAILED)
    except CallFailed as exc:
        if exc.name == "org.freedesktop.DBus.Error.Disconnected":
            return _fail(f"cannot reach the bus: {exc.text}", ExitCode.SYSTEM)
        return _fail(f"the broker cannot answer: {exc}", ExitCode.FAILED)
    entry = next((device for device in found if device.devpath == devpath), None)
    if entry is None:
        return _fail(f"{devpath}: not in the broker's device table", ExitCode.FAILED)
    props = dict(entry.properties)
    if args.json:
        fields = {"devpath": devpath, "subsystem": entry.subsystem, "sequence": entry.sequence}
        print(json.dumps({**fields, "table_sequence": sequence, "properties": props}))
    else:
        print(format_entry(devpath, entry.subsystem, props, sequence))
    return ExitCode.OK


def _fail(message: str, code: ExitCode) -> int:
    print(f"pnpbroker info: {message}", file=sys.stderr)
    return code
