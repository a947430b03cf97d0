"""The fleet's configuration (``pnpbroker forward``, ``pnpbroker fleet-monitor``): a frozen value
from a TOML file, then command-line overrides; secrets from a file only its owner can read.

Every error names the key. The secrets file (``secrets``) is TOML with ``username`` and
``password``; it must belong to the user reading it and be mode 0600 (or 0400), as ssh wants of
a private key: a password others could read is refused, with the chmod that fixes it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pnpbroker.configfile import apply, read_toml
from pnpbroker.errors import ConfigError

if TYPE_CHECKING:
    import ssl

DEFAULT_PATH = Path("/etc/pnpbroker/forward.toml")
DEFAULT_FEED = Path("/run/pnpbroker/forward.sock")


@dataclass(frozen=True)
class FleetConfig:
    """Where the MQTT broker is, how to prove who we are, and where our topics go."""

    broker: str = ""
    port: int = 0  # 0: 8883 with TLS, else 1883
    prefix: str = "pnpbroker"
    host: str = field(default_factory=socket.gethostname)
    client_id: str = ""  # "": the host
    keepalive: int = 60
    session_expiry: int = 86400
    window: int = 256
    ca: str = ""
    cert: str = ""
    key: str = ""
    secrets: str = ""
    feed: str = str(DEFAULT_FEED)
    log_level: str = "info"

    @property
    def tls(self) -> bool:
        return bool(self.ca or self.cert)

    @property
    def mqtt_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or self.host

    def replace(self, **changes: Any) -> FleetConfig:
        return dataclasses.replace(self, **changes)


_INTS = ("port", "keepalive", "session_expiry", "window")


def _convert(key: str, value: object) -> object:
    if key in _INTS:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(key, f"expected a whole number >= 0, got {value!r}")
        if key == "window" and value < 1:
            raise ConfigError(key, "must be at least 1")
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    if key in ("prefix", "host") and (not value or any(c in value for c in "+#/\0")):
        raise ConfigError(key, f"must be one non-empty topic level (no + # /), got {value!r}")
    return value


def from_mapping(data: Mapping[str, object], base: FleetConfig | None = None) -> FleetConfig:
    return apply(base or FleetConfig(), data, _convert)


def load(path: Path | None, overrides: Mapping[str, object] = {}) -> FleetConfig:
    """Read ``path`` (default /etc/pnpbroker/forward.toml), apply overrides; ``broker`` is
    required."""
    cfg = from_mapping(overrides, from_mapping(read_toml(path or DEFAULT_PATH)))
    if not cfg.broker:
        raise ConfigError("broker", "no MQTT broker given (host name or address)")
    return cfg


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None


def read_secrets(path: str) -> Credentials:
    """The username and password from ``path``; ConfigError if others could read it."""
    if not path:
        return Credentials()
    where = Path(path)
    try:
        with where.open("rb") as file:
            info = os.fstat(file.fileno())
            _check_private(where, info)
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError("secrets", f"{where}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("secrets", f"{where}: not valid TOML: {exc}") from None
    unknown = set(data) - {"username", "password"}
    if unknown or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError("secrets", f"{where}: expected string keys username and password only")
    return Credentials(data.get("username"), data.get("password"))


def _check_private(where: Path, info: os.stat_result) -> None:
    if info.st_uid != os.geteuid():
        raise ConfigError(
            "secrets", f"{where} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            "secrets",
            f"{where} is mode {mode:04o}: others could read the password; chmod 600 {where}",
        )


def tls_context(cfg: FleetConfig) -> ssl.SSLContext | None:
    """TLS 1.2 or later, the server's certificate checked against ``ca`` (else the system's
    CAs) and its name against ``broker``; our certificate from ``cert`` and ``key``."""
    if not cfg.tls:
        return None
    import ssl  # here: the broker's own process goes without it (pnpbroker.commands)

    try:
        context = ssl.create_default_context(cafile=cfg.ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert:
            context.load_cert_chain(cfg.cert, cfg.key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ca/cert/key", f"cannot load the TLS files: {exc}") from None
    return context
