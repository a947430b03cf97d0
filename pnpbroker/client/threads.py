"""The thread API: a subscription that calls back from its own thread, for code without asyncio.

Like pyudev's ``MonitorObserver``: ``Observer(callback, subsystem="usb").start()`` returns once
the starting point is fixed (nothing after it is missed), then ``callback(item)`` runs in the
observer's thread for each item, in order, until :meth:`Observer.stop`. The thread runs the
asyncio API (:mod:`.aio`) in a loop of its own. :func:`list_devices` is ``devices`` for code
that has no loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .aio import Subscription, devices, subscribe
from .model import ClientError, Item
from .table import Device


class Observer(threading.Thread):
    """Calls ``callback(item)`` for each item of ``subscribe(**options)``, from its thread.

    If the subscription fails (a :class:`~.model.ClientError`), ``on_error(error)`` is called
    from the thread (when given), ``error`` holds it, and the thread ends. ``subscription``
    gives ``position`` and, with ``enumerate``, ``devices``; read them from the callback.
    """

    def __init__(
        self,
        callback: Callable[[Item], None],
        *,
        on_error: Callable[[ClientError], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name="pnpclient-observer", daemon=True)
        self.callback = callback
        self.on_error = on_error
        self.subscription: Subscription = subscribe(**options)
        self.error: ClientError | None = None
        self._subscribed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the thread; return once subscribed (or once it failed: see ``error``)."""
        super().start()
        self._subscribed.wait()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            async with self.subscription as items:
                self._subscribed.set()
                async for item in items:
                    self.callback(item)
        except ClientError as exc:
            self.error = exc
            if self.on_error is not None:
                self.on_error(exc)
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            self._subscribed.set()

    def stop(self) -> None:
        """End the subscription; waits for the thread unless called from the callback."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(task.cancel)
        if threading.current_thread() is not self and self.is_alive():
            self.join()


def list_devices(
    *,
    subsystem: str | Iterable[str] | None = None,
    devtype: str | Iterable[str] | None = None,
    devpath: str | None = None,
    properties: Mapping[str, str] | None = None,
    address: str | None = None,
) -> tuple[int, list[Device]]:
    """:func:`~.aio.devices` for code that runs no asyncio loop (not from inside one)."""
    return asyncio.run(
        devices(
            subsystem=subsystem,
            devtype=devtype,
            devpath=devpath,
            properties=properties,
            address=address,
        )
    )
