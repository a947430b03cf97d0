"""``pnpbroker fleet-monitor``: every host's events from MQTT, each host's sequence checked.

Subscribes to ``<prefix>/+/events/#`` with a persistent session; prints one line per new event
(``--json``: the payload), drops repeats, and reports gaps, repeats and losses (on stderr, and
with ``--json`` as ``{"report": ...}`` lines too).
"""

from __future__ import annotations

import argparse
import asyncio

from pnpbroker.commands import fleet_common
from pnpbroker.contract import ExitCode
from pnpbroker.fleet.config import FleetConfig

HELP = "print every host's events from MQTT, checking each host's sequence"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fleet_common.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def main(args: argparse.Namespace) -> int:
    async def monitor(cfg: FleetConfig) -> int:
        from pnpbroker.fleet.consumer import FleetMonitor

        if not cfg.client_id:  # not the forwarder's: one id, one connection
            cfg = cfg.replace(client_id=f"fleet-monitor-{cfg.host}")
        fleet = FleetMonitor(cfg, lambda line: print(line, flush=True), args.json)
        stop = asyncio.Event()
        fleet_common.on_stop(stop.set)
        task = asyncio.create_task(fleet.session.run())
        await stop.wait()
        await fleet.session.close()
        task.cancel()
        return ExitCode.OK

    return fleet_common.start(args, monitor)
