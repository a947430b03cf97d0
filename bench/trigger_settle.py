"""Coldplug of the whole /sys, side by side: a plain shell loop writing ``add`` (the floor),
``pnpbroker trigger`` (walk + write), and ``pnpbroker trigger --settle`` (until the broker
published every event it caused). Needs root; starts a private bus and a broker (no program).

    .venv/bin/python bench/trigger_settle.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.broker import BrokerProcess  # noqa: E402
from support.bus import SystemBus  # noqa: E402

SHELL_FLOOR = "for f in $(find /sys/devices -name uevent); do echo add > $f 2>/dev/null; done"


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}): {done.stderr}")
    return time.monotonic() - start, done.stdout


def in_process(address: str) -> tuple[float, float, int]:
    """Walk + write, and walk + write + settle, without the interpreter's start-up."""
    import asyncio

    from pnpbroker import coldplug, settle

    start = time.monotonic()
    written = coldplug.trigger(coldplug.walk()).written
    write = time.monotonic() - start
    time.sleep(2)
    parser = argparse.ArgumentParser()
    coldplug.add_trigger_arguments(parser)
    settle.add_settle_arguments(parser)
    args = parser.parse_args(["--bus-address", address])
    _, settled = asyncio.run(settle.settle(args))
    return write, settled, written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    dry = [sys.executable, "-m", "pnpbroker", "trigger", "--dry-run"]
    devices = len(subprocess.run(dry, capture_output=True, text=True, check=True).stdout.split())
    uevent_files = sum(1 for _ in Path("/sys/devices").rglob("uevent"))
    with SystemBus() as bus, tempfile.TemporaryDirectory() as state:
        broker = BrokerProcess(bus, Path(state), ["--no-program"])
        broker.start()
        env = {**__import__("os").environ, **bus.env()}
        trig = [sys.executable, "-m", "pnpbroker", "trigger"]
        for _ in range(rounds):
            floor, _ = timed(["sh", "-c", SHELL_FLOOR])
            time.sleep(2)  # let the broker drain the floor's events before timing the next
            write, _ = timed(trig, env)
            time.sleep(2)
            settle, _ = timed([*trig, "--settle", "--timeout", "120"], env)
            print(
                f"shell loop ({uevent_files} files): {floor:6.3f} s "
                f"{uevent_files / floor:7.0f}/s | "
                f"trigger ({devices} devices): {write:6.3f} s {devices / write:7.0f}/s | "
                f"trigger --settle: {settle:6.3f} s {devices / settle:7.0f}/s",
                flush=True,
            )
            time.sleep(2)
            write, settled, written = in_process(bus.address)
            print(
                f"  in-process: write {written} devices {write:6.3f} s {written / write:7.0f}/s,"
                f" written and settled {settled:6.3f} s {written / settled:7.0f}/s",
                flush=True,
            )
        broker.stop()
        broker.close()


if __name__ == "__main__":
    main()
