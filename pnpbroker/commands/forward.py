"""``pnpbroker forward``: the fleet forwarder, its own service (docs/fleet.md).

It reads the events ``pnpbroker run`` serves on its feed socket (``forward_socket``) and
publishes each to MQTT 5 with QoS 1; the journal's ``forwarded`` cursor follows the PUBACKs.
"""

from __future__ import annotations

import argparse

from pnpbroker.commands import fleet_common
from pnpbroker.fleet.config import FleetConfig

HELP = "forward the broker's events to an MQTT broker (its own service)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fleet_common.add_arguments(parser)
    parser.add_argument(
        "--feed", help="the broker's feed socket (default /run/pnpbroker/forward.sock)"
    )


async def _forward(cfg: FleetConfig) -> int:
    from pnpbroker.fleet.forwarder import Forwarder

    forwarder = Forwarder(cfg)
    fleet_common.on_stop(forwarder.stop)
    return await forwarder.run()


def main(args: argparse.Namespace) -> int:
    return fleet_common.start(args, _forward)
