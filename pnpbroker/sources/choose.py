"""Which source ``pnpbroker run`` reads: ``--source``, socket activation, or its own socket.

``--source netlink`` opens our own uevent socket; ``fd:N`` uses an inherited one; ``stdin`` or a
path reads a NUL-framed stream. Without ``--source``, descriptors passed by a service manager
(LISTEN_FDS for our pid) win over opening our own. ``--helper-socket`` adds the kernel-helper
bridge beside whichever source, with duplicate SEQNUMs dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pnpbroker.errors import ConfigError
from pnpbroker.sources import Source, reorder
from pnpbroker.sources.fd import listen_fds, open_fd
from pnpbroker.sources.helper import HelperSource
from pnpbroker.sources.merge import Merged
from pnpbroker.sources.netlink import NetlinkSource
from pnpbroker.sources.stream import StreamSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceOptions:
    """The command line's say on sources; the defaults mean "as a plain service would"."""

    source: str = ""
    helper_socket: Path | None = None
    helper_window: float = reorder.SECONDS


def _primary(spec: str, receive_buffer: int) -> Source:
    if spec == "netlink":
        return NetlinkSource.open(receive_buffer)
    if spec.startswith("fd:"):
        number = spec[3:]
        if not number.isdigit():
            raise ConfigError("source", f"expected fd:N, got {spec!r}")
        return open_fd(int(number))
    if spec:
        try:
            return StreamSource.open(spec)
        except OSError as exc:
            raise ConfigError("source", f"cannot read {spec}: {exc.strerror}") from None
    passed = listen_fds()
    if not passed:
        return NetlinkSource.open(receive_buffer)
    if len(passed) > 1:
        log.warning("LISTEN_FDS=%d: using fd %d, ignoring the rest", len(passed), passed[0])
    return open_fd(passed[0])


def open_sources(options: SourceOptions, receive_buffer: int) -> Source:
    """The one source the reader watches."""
    primary = _primary(options.source, receive_buffer)
    if options.helper_socket is None:
        return primary
    try:
        helper = HelperSource(options.helper_socket, options.helper_window)
    except OSError:
        primary.close()
        raise
    return Merged(primary, helper)
