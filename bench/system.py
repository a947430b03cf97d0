"""Under a real systemd: ``systemctl start`` to ready, beside the floor of any Python service.

``python bench/system.py [--repeat N]`` (root; builds or reuses the cached Debian 12 tree of
tests/system). In one booted machine, with pnpbroker installed by the pip route of
docs/system.md, it starts and stops two units N times each, interleaved:

- ``pnpbroker.service`` (``Type=notify``: ready once the socket is taken over, the journal
  opened and ``org.pnp.Broker`` owned on the system bus);
- the floor: a ``Type=notify`` unit whose program is the same virtualenv's Python doing nothing
  but ``READY=1`` on ``$NOTIFY_SOCKET`` (interpreter start-up plus one datagram).

Each time is systemd's own: the unit's ActiveEnterTimestampMonotonic minus its
InactiveExitTimestampMonotonic. It prints the medians, spreads and the ratio.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from support.container import Machine, machine  # noqa: E402

FLOOR_PROGRAM = """#!/opt/pnpbroker/bin/python
import os, signal, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
signal.pause()
"""
FLOOR_UNIT = "[Service]\nType=notify\nExecStart=/usr/local/bin/pnpt-floor\n"
PIP_ROUTE = (
    "python3 -m venv /opt/pnpbroker && "
    "/opt/pnpbroker/bin/pip install -q --no-index --find-links /mnt/wheels pnpbroker && "
    "/opt/pnpbroker/bin/pnpbroker install >/dev/null && "
    "systemctl enable --quiet --now pnpbroker.socket pnpbroker.service"
)


def start_to_ready(booted: Machine, unit: str) -> float:
    booted.run(["systemctl", "stop", unit])
    booted.run(["systemctl", "start", unit])
    show = booted.run(
        ["systemctl", "show", "-P", "InactiveExitTimestampMonotonic", unit]
    ).stdout.strip()
    ready = booted.run(
        ["systemctl", "show", "-P", "ActiveEnterTimestampMonotonic", unit]
    ).stdout.strip()
    return (int(ready) - int(show)) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description="systemctl start to ready, beside a floor")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pnpt-bench-wheels-") as wheels:
        Path(wheels).chmod(0o755)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", wheels, str(REPO)], check=True
        )
        with machine([(Path(wheels), "/mnt/wheels")]) as booted:
            booted.run(PIP_ROUTE)
            booted.run("cat > /usr/local/bin/pnpt-floor", input=FLOOR_PROGRAM)
            booted.run(["chmod", "755", "/usr/local/bin/pnpt-floor"])
            booted.run("cat > /etc/systemd/system/pnpt-floor.service", input=FLOOR_UNIT)
            booted.run(["systemctl", "daemon-reload"])
            times: dict[str, list[float]] = {"pnpbroker.service": [], "pnpt-floor.service": []}
            for _ in range(args.repeat):
                for unit, values in times.items():
                    values.append(start_to_ready(booted, unit))
    broker, floor = (statistics.median(v) for v in times.values())
    print("| figure | median | spread (min-max) | floor | ratio |")
    print("|---|---|---|---|---|")
    for unit, values in times.items():
        ratio = f"{broker / floor:.2f}" if unit == "pnpbroker.service" else ""
        limit = f"{floor * 1000:.1f} ms" if ratio else ""
        print(
            f"| systemctl start -> ready: {unit} | {statistics.median(values) * 1000:.1f} ms | "
            f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f} ms | {limit} | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
