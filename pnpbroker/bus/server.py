"""The D-Bus server around the pipeline, as firewalld's server wraps its core.

It keeps a connection to the system bus: exports the service object, takes ``org.pnp.Broker``,
attaches the link to the pipeline's publish queue, and asks polkit about privileged callers.
When the bus goes away it detaches the link and reconnects; meanwhile the pipeline goes on
reading, journalling and running programs, and publishes from where it stopped once a link is
back. Readiness (``READY=1``) is sent once the name is owned the first time.

What a bus can fix is retried with backoff (0.2 s doubling to 5 s), holding at most one
connection, and logged when it starts, every minute while it lasts, and when it is over: no
bus at the address (yet, or any more), something there that is not a bus, authentication
refused, the policy refusing us the name (a policy file not yet read: ``ReloadConfig`` fixes
it). What no retry fixes ends the broker with exit 111: the name owned by another connection
(another broker: at the start at once; after a reconnection, if it is still owned after
``NAME_TAKEN_SECONDS``, since our own dropped connection may hold it a moment longer), and
anything the keeper does not expect (the supervisor reports it).
"""

from __future__ import annotations

import asyncio
import logging
import time

from dbus_fast.errors import DBusFastError

from pnpbroker import names
from pnpbroker.bus.link import BusLink, NameTaken
from pnpbroker.bus.polkit import Authority, NotAuthorized
from pnpbroker.bus.service import BrokerInterface, Caller, track_callers
from pnpbroker.contract import ExitCode
from pnpbroker.core.pipeline import Pipeline
from pnpbroker.notify import sd_notify
from pnpbroker.trouble import Trouble

log = logging.getLogger(__name__)

RECONNECT_FIRST, RECONNECT_MAX = 0.2, 5.0
#: After a reconnection, how long the name may stay owned by another connection before that
#: counts as another broker.
NAME_TAKEN_SECONDS = 5.0
#: What a bus can fix: no socket, a closed one, a failed handshake, a refusal by the daemon.
RETRIED = (OSError, EOFError, DBusFastError)


class BusServer:
    """Serves ``pipeline`` on the bus at ``address`` (empty: the system bus)."""

    def __init__(self, pipeline: Pipeline, address: str = "") -> None:
        self.pipeline = pipeline
        self.address = address or None
        self.interface = BrokerInterface(pipeline, self.authorize)
        self.link: BusLink | None = None
        self.authority: Authority | None = None
        self._ready = False
        self._trouble = Trouble(log)

    async def authorize(self, caller: Caller, action_id: str) -> None:
        """polkit decides (CheckAuthorization on the caller's bus name, interactive if the
        caller's message allows it)."""
        if self.authority is None:
            raise NotAuthorized(action_id, "not connected to the bus")
        await self.authority.check(caller.sender, action_id, caller.interactive)
        log.info("%s authorized for %s", caller.sender, action_id)

    async def run(self) -> ExitCode:
        """Run the pipeline with the bus kept up; close everything once it has drained."""
        keeper = self.pipeline.supervisor.start(self._keep(), "bus")
        code = await self.pipeline.run()
        await self.pipeline.supervisor.cancel(keeper)
        if self.link is not None:
            self.link.close()
        self.pipeline.close()
        return code

    async def _keep(self) -> None:
        """Connect, serve until the connection is gone, again; see the module docstring."""
        delay, taken_since = RECONNECT_FIRST, None
        while True:
            try:
                link = await self._connect()
            except NameTaken as exc:
                now = time.monotonic()
                taken_since = taken_since or now
                if not self._ready or now - taken_since >= NAME_TAKEN_SECONDS:
                    log.error("%s (another broker?); stopping", exc)
                    self.pipeline.fail(ExitCode.SYSTEM)
                    return
            except RETRIED as exc:
                self._trouble.failed(
                    "system bus unreachable or refusing us (%s: %s); journalling and running "
                    "programs until it is usable, retrying with backoff",
                    type(exc).__name__,
                    exc,
                )
            else:
                self._trouble.over("on the bus again")
                delay, taken_since = RECONNECT_FIRST, None
                await self._serve(link)
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _connect(self) -> BusLink:
        link = await BusLink.connect(self.address)
        try:
            track_callers(link.bus, self.interface)
            await link.serve(self.interface)
        except BaseException:
            link.close()
            raise
        log.info("on the bus as %s (%s)", names.BUS_NAME, link.bus.unique_name)
        return link

    async def _serve(self, link: BusLink) -> None:
        """Publish over ``link`` until it closes."""
        self.link = link
        self.authority = Authority(link.bus)
        self.pipeline.publisher.attach(link)
        self._became_ready()
        await link.wait_closed()
        self.link = None
        self.pipeline.publisher.attach(None)

    def _became_ready(self) -> None:
        if not self._ready:
            self._ready = True
            sd_notify(f"READY=1\nSTATUS={self.pipeline.status_line()}")
