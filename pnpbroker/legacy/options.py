"""The legacy path's configuration keys, checked at the edge: every error names its key.

Pure functions, no I/O beyond the passwd and group databases: ``pnpbroker.config`` calls
:func:`convert` for the keys in :data:`KEYS`, and the modes use the compiled forms.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from pnpbroker.errors import ConfigError
from pnpbroker.sizes import parse_size
from pnpbroker.uevent import Uevent

MODES = ("program", "hotplug.d", "agents")
PATH_KEYS = ("hotplug_d", "agents_dir", "agent_fallback")
KEYS = ("mode", "skip", "user", "group", "limits", *PATH_KEYS)

#: ``limits`` names, as systemd's ``Limit*=`` spell them, and their resource.
LIMITS = {
    name.removeprefix("RLIMIT_").lower(): getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"  # OFILE: BSD's NOFILE
}

Limits = tuple[tuple[str, int], ...]


def convert(key: str, value: object) -> object:
    """The checked value of legacy key ``key``; raises ConfigError naming it."""
    if key == "skip":
        return _skip(key, value)
    if key == "limits":
        return _limits(key, value)
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    if key == "mode" and value not in MODES:
        raise ConfigError(key, f"expected one of {', '.join(MODES)}, got {value!r}")
    if key in PATH_KEYS and value and not os.path.isabs(value):
        raise ConfigError(key, f"expected an absolute path, got {value!r}")
    if key == "user" and value:
        _user_entry(key, value)
    if key == "group" and value:
        group_id(key, value)
    return value


@dataclass(frozen=True, slots=True)
class SkipPattern:
    """``subsystem``, ``subsystem/action`` or ``*/action``; ``*`` matches anything."""

    subsystem: str
    action: str = "*"

    @classmethod
    def parse(cls, text: str) -> SkipPattern:
        subsystem, _, action = text.partition("/")
        return cls(subsystem, action or "*")

    def matches(self, event: Uevent) -> bool:
        return self.subsystem in ("*", event.subsystem) and self.action in ("*", event.action)


def _skip(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f'expected a list of strings like "net/remove", got {value!r}')
    for text in value:
        subsystem, slash, action = text.partition("/")
        if not subsystem or (slash and not action) or "/" in action:
            raise ConfigError(
                key, f'expected "subsystem", "subsystem/action" or "*/action", got {text!r}'
            )
    return tuple(value)


def _limits(key: str, value: object) -> Limits:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table like {{ nofile = 1024 }}, got {value!r}")
    checked: list[tuple[str, int]] = []
    for name, amount in value.items():
        if name not in LIMITS:
            raise ConfigError(f"{key}.{name}", f"unknown limit; known: {', '.join(LIMITS)}")
        checked.append((name, _amount(f"{key}.{name}", amount)))
    return tuple(sorted(checked))


def _amount(key: str, value: object) -> int:
    if value == "infinity":
        return resource.RLIM_INFINITY
    if (number := parse_size(value)) is not None:
        return number
    raise ConfigError(key, f'expected a count, a size like "64M", or "infinity", got {value!r}')


def rlimits(limits: Limits) -> tuple[tuple[int, int], ...]:
    """``(RLIMIT_*, value)`` pairs for setrlimit (soft and hard both set to the value)."""
    return tuple((LIMITS[name], amount) for name, amount in limits)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a program runs as: the uid (None: unchanged), the gid and supplementary groups."""

    uid: int | None
    gid: int
    groups: tuple[int, ...]


def _user_entry(key: str, user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(key, f"no such user {user!r}") from None


def group_id(key: str, group: str) -> int:
    """The gid of ``group`` (a name or a number)."""
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(key, f"no such group {group!r}") from None


def credentials(user: str, group: str) -> Credentials | None:
    """The ids for ``user``/``group``: the user's own groups unless ``group`` is given."""
    if not user and not group:
        return None
    if not user:
        gid = group_id("group", group)
        return Credentials(None, gid, (gid,))
    entry = _user_entry("user", user)
    gid = group_id("group", group) if group else entry.pw_gid
    return Credentials(entry.pw_uid, gid, tuple(os.getgrouplist(entry.pw_name, gid)))
