"""What ``forward`` and ``fleet-monitor`` share: the configuration file and its overrides."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pnpbroker.contract import STOP_SIGNALS, ExitCode
from pnpbroker.errors import ConfigError

log = logging.getLogger("pnpbroker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, help="TOML file (default /etc/pnpbroker/forward.toml)"
    )
    parser.add_argument("--broker", help="the MQTT broker's host name or address")
    parser.add_argument("--port", type=int, help="its port (default 8883 with TLS, else 1883)")
    parser.add_argument("--prefix", help="the first topic level (default pnpbroker)")
    parser.add_argument("--client-id", help="MQTT client id (default: the host name)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def overrides(args: argparse.Namespace) -> dict[str, object]:
    keys = ("broker", "port", "prefix", "client_id", "feed")
    found = {k: v for k in keys if (v := getattr(args, k, None)) is not None}
    if args.verbose:
        found["log_level"] = "debug"
    return found


def start(args: argparse.Namespace, body: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    """Load the configuration, then run ``body(cfg)`` until it ends or a stop signal."""
    from pnpbroker.commands.run import setup_logging
    from pnpbroker.fleet import config

    try:
        cfg = config.load(args.config, overrides(args))
        config.read_secrets(cfg.secrets)
        config.tls_context(cfg)
    except ConfigError as exc:
        setup_logging("info")
        log.error("bad configuration: %s", exc)
        return ExitCode.CONFIG
    setup_logging(cfg.log_level)
    return asyncio.run(body(cfg))


def on_stop(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
