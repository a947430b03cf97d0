"""The D-Bus object ``/org/pnp/Broker``: a thin skin over the pipeline.

Signals are declared here, so introspection shows the contract, but sent by the link
(:mod:`pnpbroker.bus.link`) when the publish queue asks: Event for each handled event,
EventsLost for each loss, in its place; their bodies come from :mod:`pnpbroker.bus.wire`.
GetEvents and GetEvents2 read the journal in the core's reader thread
(:mod:`pnpbroker.core.queries`).
Each privileged method authorizes the caller, calls the core, and returns; broker errors become
named D-Bus errors with a readable message and never a traceback.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from pnpbroker import __version__, names
from pnpbroker.bus.wire import (
    PAGE_SIGNATURE,
    device_filter,
    device_row,
    event_body,
    event_filter,
    page_body,
    trigger_options,
)
from pnpbroker.client.model import Filter
from pnpbroker.client.table import Device
from pnpbroker.core.queries import Page
from pnpbroker.errors import NoLongerJournalled
from pnpbroker.journal import Record

log = logging.getLogger(__name__)

#: The most events one GetEvents call returns; clients page with ``after``.
MAX_PAGE = 4096

EventRow = Annotated[
    tuple[int, str, str, str, dict[str, str], dict[str, Variant]],
    DBusSignature("(tsssa{ss}a{sv})"),
]
EventRows = Annotated[list[EventRow], DBusSignature("a(tsssa{ss}a{sv})")]
DeviceRows = Annotated[list[tuple[str, str, Mapping[str, str]]], DBusSignature("a(ssa{ss})")]
#: A method that returns nothing (a bare ``None`` annotation confuses dbus-fast).
Nothing = Annotated[None, DBusSignature("")]

#: Argument names dbus-fast cannot take from Python: those of signals and of method results.
ARG_NAMES: dict[str, tuple[str, ...]] = {
    "Event": ("sequence", "action", "subsystem", "devpath", "properties", "handler"),
    "EventsLost": ("after_sequence", "resync_uuid"),
    "GetEvents": ("events",),
    "GetEvents2": ("events", "lost", "through"),
    "GetDevices": ("sequence", "devices"),
    "Trigger": ("uuid", "count"),
}
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"


class Core(Protocol):
    """What the service needs from the pipeline; the service itself holds no state."""

    @property
    def paused(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def reload(self) -> None: ...

    async def events_after(self, after: int, limit: int) -> list[Record]: ...

    async def page(self, after: int, limit: int, wanted: Filter) -> Page: ...

    @property
    def last_sequence(self) -> int: ...

    @property
    def journal_id(self) -> str: ...

    @property
    def oldest_sequence(self) -> int: ...

    def statistics(self) -> dict[str, int]: ...

    async def device_snapshot(self, wanted: Filter) -> tuple[int, list[Device]]: ...

    async def trigger(
        self,
        subsystems: Sequence[str],
        action: str,
        devices: Sequence[str] | None = None,
        uuid: str | None = None,
    ) -> tuple[str, int]: ...


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the method call being served: its unique bus name, and whether it allows
    interactive authorization (the message's ALLOW_INTERACTIVE_AUTHORIZATION flag)."""

    sender: str = ""
    interactive: bool = False


#: Returns if the caller may do the action (a polkit action id), else raises PermissionError.
Authorize = Callable[[Caller, str], Awaitable[None]]

#: The caller whose method call is being served.
#: dbus-fast does not hand the message to a service method, but it runs our message handler
#: first and then creates the method's task, which copies this context: each call keeps its own.
_NOBODY = Caller()
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=_NOBODY)


def track_callers(bus: MessageBus, interface: ServiceInterface) -> None:
    """Make each method call's sender and flags available to :func:`caller`, and answer a call
    of one of ``interface``'s methods with other arguments than its own with InvalidArgs
    (dbus-fast would say UnknownMethod). Install once per bus."""
    signatures = {m.name: m.in_signature for m in interface.introspect().methods}

    def remember(msg: Message) -> None:
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != names.OBJECT_PATH:
            return
        wanted = signatures.get(msg.member or "")
        if msg.interface == names.INTERFACE and wanted is not None and msg.signature != wanted:
            raise DBusError(
                names.ERROR_INVALID_ARGS,
                f"{msg.member} takes ({wanted}), not ({msg.signature})",
            )
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        _caller.set(Caller(msg.sender or "", interactive))

    bus.add_message_handler(remember)


def caller() -> Caller:
    """The sender of the method call being served, and its flags."""
    return _caller.get()


def named_errors(method: F) -> F:
    """Turn our errors into named D-Bus errors; anything else is logged and reported plainly."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except DBusError:
            raise
        except NoLongerJournalled as exc:
            raise DBusError(names.ERROR_JOURNAL_GAP, str(exc)) from None
        except PermissionError as exc:
            raise DBusError(names.ERROR_NOT_AUTHORIZED, str(exc)) from None
        except ValueError as exc:
            raise DBusError(names.ERROR_INVALID_ARGS, str(exc)) from None
        except Exception:
            log.exception("%s failed", method.__name__)
            raise DBusError(names.ERROR_FAILED, "internal error; see the broker's log") from None

    return wrapper  # type: ignore[return-value]


class BrokerInterface(ServiceInterface):
    """``org.pnp.Broker1``: the contract in dbus/org.pnp.Broker1.xml."""

    #: Properties that send PropertiesChanged; the others say so with EmitsChangedSignal=false
    #: (LastSequence would double the bus traffic: it changes with every event; see the XML).
    emitting_properties: frozenset[str] = frozenset({"Paused"})

    def __init__(self, core: Core, authorize: Authorize) -> None:
        super().__init__(names.INTERFACE)
        self.core = core
        self.authorize = authorize

    def introspect(self) -> intr.Interface:
        """dbus-fast's introspection plus what the contract says and Python cannot express."""
        found = super().introspect()
        members: list[tuple[str, list[intr.Arg]]] = [(s.name, s.args) for s in found.signals]
        members += [(m.name, m.out_args) for m in found.methods]
        for member, args in members:
            for arg, name in zip(args, ARG_NAMES.get(member, ()), strict=False):
                arg.name = name
        for prop in found.properties:
            if prop.name not in self.emitting_properties:
                prop.annotations[EMITS_CHANGED] = "false"
        return found

    @dbus_signal()
    def Event(
        self,
    ) -> Annotated[
        tuple[int, str, str, str, dict[str, str], dict[str, Variant]],
        DBusSignature("tsssa{ss}a{sv}"),
    ]:
        raise NotImplementedError("sent by the link for the publish queue")

    @dbus_signal()
    def EventsLost(self) -> Annotated[tuple[int, str], DBusSignature("ts")]:
        raise NotImplementedError("sent by the link when the pipeline reports a loss")

    @dbus_method()
    @named_errors
    async def GetEvents(
        self,
        after: Annotated[int, DBusSignature("t")],
        limit: Annotated[int, DBusSignature("u")],
    ) -> EventRows:
        limit = MAX_PAGE if limit == 0 else min(limit, MAX_PAGE)
        return [tuple(event_body(r)) for r in await self.core.events_after(after, limit)]

    @dbus_method()
    @named_errors
    async def GetEvents2(
        self,
        after: Annotated[int, DBusSignature("t")],
        limit: Annotated[int, DBusSignature("u")],
        filter: Annotated[dict[str, Variant], DBusSignature("a{sv}")],
    ) -> Annotated[list[Any], DBusSignature(PAGE_SIGNATURE)]:
        limit = MAX_PAGE if limit == 0 else min(limit, MAX_PAGE)
        return page_body(await self.core.page(after, limit, event_filter(filter)))

    @dbus_method()
    @named_errors
    async def GetDevices(
        self, filter: Annotated[dict[str, Variant], DBusSignature("a{sv}")]
    ) -> Annotated[list[Any], DBusSignature("ta(ssa{ss})")]:
        wanted = device_filter(filter)
        sequence, entries = await self.core.device_snapshot(wanted)
        rows: DeviceRows = [device_row(entry) for entry in entries]
        return [sequence, rows]

    @dbus_method()
    @named_errors
    async def Trigger(
        self, options: Annotated[dict[str, Variant], DBusSignature("a{sv}")]
    ) -> Annotated[list[Any], DBusSignature("su")]:
        request = trigger_options(options)
        await self.authorize(caller(), names.ACTION_TRIGGER)
        uuid, count = await self.core.trigger(
            request.subsystems, request.action, request.devices, request.uuid
        )
        return [uuid, count]

    @dbus_method()
    @named_errors
    async def Pause(self) -> Nothing:
        await self.authorize(caller(), names.ACTION_CONTROL)
        self._set_paused(True)

    @dbus_method()
    @named_errors
    async def Resume(self) -> Nothing:
        await self.authorize(caller(), names.ACTION_CONTROL)
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        """Pause or resume; PropertiesChanged when Paused changed."""
        if paused == self.core.paused:
            return
        if paused:
            self.core.pause()
        else:
            self.core.resume()
        self.emit_properties_changed({"Paused": self.core.paused})

    @dbus_method()
    @named_errors
    async def Reload(self) -> Nothing:
        await self.authorize(caller(), names.ACTION_CONTROL)
        self.core.reload()

    @dbus_property(access=PropertyAccess.READ)
    def Paused(self) -> Annotated[bool, DBusSignature("b")]:
        return self.core.paused

    @dbus_property(access=PropertyAccess.READ)
    def LastSequence(self) -> Annotated[int, DBusSignature("t")]:
        return self.core.last_sequence

    @dbus_property(access=PropertyAccess.READ)
    def OldestSequence(self) -> Annotated[int, DBusSignature("t")]:
        return self.core.oldest_sequence

    @dbus_property(access=PropertyAccess.READ)
    def JournalId(self) -> Annotated[str, DBusSignature("s")]:
        return self.core.journal_id

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> Annotated[str, DBusSignature("s")]:
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Statistics(self) -> Annotated[dict[str, int], DBusSignature("a{st}")]:
        return self.core.statistics()
