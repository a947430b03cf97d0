"""The broker's configuration: a frozen value from a TOML file, then command-line overrides.

Every error names the key it is about. Unknown keys are errors too: a typo must not silently
leave a default in force.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pnpbroker.configfile import apply, read_toml
from pnpbroker.errors import ConfigError
from pnpbroker.legacy import options as legacy
from pnpbroker.rebroadcast import Target, parse_targets
from pnpbroker.sizes import parse_size
from pnpbroker.sources import reorder

DEFAULT_PATH = Path("/etc/pnpbroker/pnpbroker.toml")
LEGACY_PROGRAM = Path("/sbin/hotplug")


def default_program() -> str:
    """/sbin/hotplug when it exists and is executable, otherwise no program."""
    return str(LEGACY_PROGRAM) if os.access(LEGACY_PROGRAM, os.X_OK) else ""


@dataclass(frozen=True)
class Config:
    """Everything the broker can be told; see the README's configuration table."""

    hotplug_program: str = field(default_factory=default_program)
    timeout: float = 180.0
    kill_grace: float = 5.0
    state_dir: Path = Path("/var/lib/pnpbroker")
    receive_buffer: int = 128 << 20
    retention_events: int = 100_000
    retention_days: float = 7.0
    journal_max_events: int = 1_000_000
    journal_sync: str = "full"
    log_level: str = "info"
    bus_address: str = ""
    helper_window: float = reorder.SECONDS  # seconds a helper datagram waits for earlier ones
    # The legacy path (pnpbroker.legacy): mode, skip list, credentials and limits.
    mode: str = "program"
    hotplug_d: str = "/etc/hotplug.d"
    agents_dir: str = "/etc/hotplug"
    agent_fallback: str = ""
    skip: tuple[str, ...] = ()
    user: str = ""
    group: str = ""
    limits: legacy.Limits = ()
    # Netlink re-broadcast of handled events (pnpbroker.rebroadcast, docs/libudev.md).
    rebroadcast: tuple[Target, ...] = ()
    # The fleet feed for ``pnpbroker forward`` (pnpbroker.core.feed, docs/fleet.md).
    forward_socket: str = ""
    forward_group: str = ""

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_LEVELS = ("debug", "info", "warning", "error")
_SYNC = ("full", "normal")
#: The smallest journal cap: room for a resync of a small system's devices.
MIN_JOURNAL_EVENTS = 1000
ADDRESS_ENV = "DBUS_SYSTEM_BUS_ADDRESS"


def _size(key: str, value: object) -> int:
    number = parse_size(value)
    if number is not None:
        return number
    raise ConfigError(key, f'expected a size in bytes (e.g. 134217728 or "128M"), got {value!r}')


def _number(key: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ConfigError(key, f"expected a positive number, got {value!r}")


def _convert(key: str, value: object) -> object:
    if key in ("timeout", "kill_grace", "retention_days", "helper_window"):
        return _number(key, value)
    if key in ("receive_buffer", "retention_events", "journal_max_events"):
        number = _size(key, value)
        if number <= 0:
            raise ConfigError(key, f"must be positive, got {number}")
        if key == "journal_max_events" and number < MIN_JOURNAL_EVENTS:
            raise ConfigError(
                key,
                f"at least {MIN_JOURNAL_EVENTS}, got {number} (a resync re-announces every "
                "device: the journal must hold them)",
            )
        return number
    if key in legacy.KEYS:
        return legacy.convert(key, value)
    if key == "rebroadcast":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f'expected a list of strings (e.g. ["libudev"]), got {value!r}')
        return parse_targets(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    if key == "state_dir":
        return Path(value)
    if key == "log_level" and value not in _LEVELS:
        raise ConfigError(key, f"expected one of {', '.join(_LEVELS)}, got {value!r}")
    if key == "journal_sync" and value not in _SYNC:
        raise ConfigError(key, f"expected one of {', '.join(_SYNC)}, got {value!r}")
    if key == "bus_address" and value:
        check_bus_address(value, key)
    return value


def check_bus_address(address: str, where: str) -> None:
    """ConfigError (key ``bus_address``) unless ``address`` parses as a D-Bus address:
    ``transport:key=value,...``, several separated by ``;``. Whether a bus answers there is
    the bus keeper's business (it retries); an address that does not parse never works."""
    for part in address.split(";"):
        transport, colon, options = part.partition(":")
        pairs = [pair.partition("=") for pair in options.split(",")] if options else []
        if not (colon and transport and all(k and eq for k, eq, _ in pairs)):
            raise ConfigError(
                "bus_address",
                f"{where}={address!r} is not a D-Bus address (transport:key=value,...)",
            )


def from_mapping(data: Mapping[str, object], base: Config | None = None) -> Config:
    """Apply ``data`` (TOML keys or overrides) on top of ``base``."""
    return apply(base or Config(), data, _convert)


def load(path: Path | None, overrides: Mapping[str, object] = {}) -> Config:
    """Read ``path`` (the default path may be missing), then apply command-line overrides."""
    data = read_toml(path or DEFAULT_PATH, missing_ok=path is None)
    config = from_mapping(overrides, from_mapping(data))
    if not config.bus_address and (env := os.environ.get(ADDRESS_ENV)):
        check_bus_address(env, ADDRESS_ENV)
    return config
