"""Every background task of the broker, watched: none may end on its own, or die silently.

The stages (sequencer, publisher), the helpers (housekeeping, status) and the bus keeper run
until the broker stops. Each survives what it knows how to survive (a full disk, a bus that
refuses us: logged and retried, see :mod:`pnpbroker.trouble`); anything else that ends one of
them ends the broker with exit 111, so that the service manager restarts it whole instead of
leaving it running half-alive. This is systemd's answer for a service (``Restart=on-failure``);
inside the process there is no restarting of single tasks: their state is the pipeline's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    """Starts tasks and calls ``on_failure`` when one ends while ``stopping()`` is false."""

    def __init__(self, on_failure: Callable[[], None], stopping: Callable[[], bool]) -> None:
        self.on_failure = on_failure
        self.stopping = stopping
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(self._ended)
        self.tasks.append(task)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self.tasks.remove(task)
        if task.cancelled() or self.stopping():
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "it returned"
        log.error(
            "%s stopped unexpectedly (%s); stopping the broker (exit 111)",
            task.get_name(),
            why,
            exc_info=exc,
        )
        self.on_failure()

    async def cancel(self, *tasks: asyncio.Task[Any]) -> None:
        """Cancel ``tasks`` and wait for them (their ending is expected then)."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
