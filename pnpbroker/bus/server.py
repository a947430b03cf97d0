"""The D-Bus server around the pipeline, as firewalld's server wraps its core.

It keeps a connection to the system bus: exports the service object, takes ``org.pnp.Broker``,
attaches the link to the pipeline's publish queue, and asks polkit about privileged callers.
When the bus goes away it detaches the link and reconnects; meanwhile the pipeline goes on
reading, journalling and running programs, and publishes from where it stopped once a link is
back. Readiness (``READY=1``) is sent once the name is owned the first time.
"""

from __future__ import annotations

import asyncio
import logging

from dbus_fast.errors import DBusError

from pnpbroker import names
from pnpbroker.bus.link import BusLink, NameTaken
from pnpbroker.bus.polkit import Authority, NotAuthorized
from pnpbroker.bus.service import BrokerInterface, Caller, track_callers
from pnpbroker.contract import ExitCode
from pnpbroker.core.pipeline import Pipeline
from pnpbroker.notify import sd_notify

log = logging.getLogger(__name__)

RECONNECT_FIRST, RECONNECT_MAX = 0.2, 5.0


class BusServer:
    """Serves ``pipeline`` on the bus at ``address`` (empty: the system bus)."""

    def __init__(self, pipeline: Pipeline, address: str = "") -> None:
        self.pipeline = pipeline
        self.address = address or None
        self.interface = BrokerInterface(pipeline, self.authorize)
        self.link: BusLink | None = None
        self.authority: Authority | None = None
        self._ready = False

    async def authorize(self, caller: Caller, action_id: str) -> None:
        """polkit decides (CheckAuthorization on the caller's bus name, interactive if the
        caller's message allows it)."""
        if self.authority is None:
            raise NotAuthorized(action_id, "not connected to the bus")
        await self.authority.check(caller.sender, action_id, caller.interactive)
        log.info("%s authorized for %s", caller.sender, action_id)

    async def run(self) -> ExitCode:
        """Run the pipeline with the bus kept up; close everything once it has drained."""
        keeper = asyncio.get_running_loop().create_task(self._keep(), name="bus")
        code = await self.pipeline.run()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        if self.link is not None:
            self.link.close()
        self.pipeline.close()
        return code

    async def _keep(self) -> None:
        delay, warned = RECONNECT_FIRST, False
        while True:
            try:
                link = await self._connect()
            except NameTaken as exc:
                log.error("%s; stopping", exc)
                self.pipeline.fail(ExitCode.SYSTEM)
                return
            except (OSError, DBusError, EOFError) as exc:
                if not warned:
                    log.warning("system bus unreachable (%s); journalling until it is back", exc)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay, warned = RECONNECT_FIRST, False
            await self._serve(link)

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
