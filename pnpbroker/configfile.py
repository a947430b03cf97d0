"""A configuration file: its TOML table read, and keys applied onto a frozen dataclass.

Shared by the broker's configuration (:mod:`pnpbroker.config`) and the forwarder's
(:mod:`pnpbroker.fleet.config`); each brings its dataclass and its own conversion of values.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pnpbroker.errors import ConfigError

Settings = TypeVar("Settings")


def read_toml(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """The table in ``path`` (``{}`` for a missing file when ``missing_ok``); ConfigError
    naming the file when it cannot be read or is not TOML."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(str(path), "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None


def apply(
    base: Settings, data: Mapping[str, object], convert: Callable[[str, object], object]
) -> Settings:
    """``base`` (a dataclass) with ``data``'s keys, each through ``convert``; ConfigError for
    a key the dataclass does not have."""
    known = {f.name for f in dataclasses.fields(base)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(key, "unknown key")
        changes[key] = convert(key, value)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]
