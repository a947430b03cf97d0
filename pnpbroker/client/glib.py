"""The GLib API: a subscription whose callbacks run on a GLib main loop (GTK, GNOME), no thread.

    sub = GLibSubscription(on_item, subsystem="usb", devtype="usb_device", enumerate=True)
    sub.start()          # then run the application's main loop; sub.stop() when done

It drives :class:`~.protocol.Session` with GIO's own D-Bus client (``Gio.DBusConnection``,
PyGObject): a private connection to the system bus made asynchronously, calls answered on the
main context, signals dispatched there in the order they arrived, and the connection's
``closed`` signal for reconnecting. GIO rather than dbus-fast's GLib backend: it is what a GTK
application already runs on, it reports a closed connection (dbus-fast's GLib bus has no
notification for it), and it needs nothing but PyGObject, which the application has. Callbacks
run on the thread-default main context of the thread that calls :meth:`start`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gi.repository import Gio, GLib

from .model import CallFailed, ClientError, Item, Position, Var, make_filter
from .protocol import Call, Conn, Connect, Session, Signal, Sleep, Started, Steps, Wait
from .table import DeviceTable

SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
#: Calls are not timed out by us: a lost connection fails them (GetDevices may wait a while).
_NO_TIMEOUT = GLib.MAXINT


def _gvariant(value: Any) -> Any:
    """A call's arguments with :class:`Var` as GLib.Variant (PyGObject wants them for ``v``)."""
    if isinstance(value, Var):
        return GLib.Variant(value.signature, _gvariant(value.value))
    if isinstance(value, dict):
        return {key: _gvariant(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_gvariant(item) for item in value]
    return value


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


class GLibSubscription:
    """``callback(item)`` for each item of the subscription, on the main context; keyword
    arguments as :func:`~.aio.subscribe`'s. ``on_started()`` once the starting point is fixed
    (with ``enumerate``, ``devices`` holds the devices present then, none of them yet passed
    to ``callback``). A failure (a :class:`~.model.ClientError`) ends it: ``on_error(error)``
    is called and ``error`` holds it."""

    def __init__(
        self,
        callback: Callable[[Item], None],
        *,
        on_error: Callable[[ClientError], None] | None = None,
        on_started: Callable[[], None] | None = None,
        address: str | None = None,
        after: Position | str | int | None = None,
        enumerate: bool = False,
        reconnect: bool = True,
        **filter_options: Any,
    ) -> None:
        self.callback = callback
        self.on_error = on_error
        self.on_started = on_started
        self.address = address or system_bus_address()
        self.session = Session(make_filter(**filter_options), after, enumerate, reconnect)
        self.error: ClientError | None = None
        self.started = False
        self._steps: Steps | None = None
        self._bus: Gio.DBusConnection | None = None
        self._conn: Conn | None = None
        self._handlers: list[int] = []
        self._timer = 0
        self._waiting = False
        self._stopped = False
        self._stepping = False
        self._pending: tuple[Any, BaseException | None] | None = None

    @property
    def position(self) -> Position | None:
        return self.session.at

    @property
    def devices(self) -> DeviceTable | None:
        return self.session.devices

    def start(self) -> None:
        """Connect and subscribe; the callbacks follow from the main loop."""
        self._steps = self.session.run()
        self._resume(None, None)

    def stop(self) -> None:
        """No more callbacks; close the connection."""
        self._stopped = True
        self._cancel_timer()
        self._close()
        if self._steps is not None:
            self._steps.close()

    # Running the session: each answer resumes it; it runs until it waits for the next one.
    def _resume(self, value: Any, error: BaseException | None) -> None:
        self._pending = (value, error)
        if self._stepping:  # an answer that came at once, from inside a step: the loop takes it
            return
        self._stepping = True
        try:
            while self._pending is not None and not self._stopped:
                (value, error), self._pending = self._pending, None
                self._step(value, error)
        finally:
            self._stepping = False

    def _step(self, value: Any, error: BaseException | None) -> None:
        assert self._steps is not None
        while not self._stopped:
            try:
                step = self._steps.throw(error) if error is not None else self._steps.send(value)
            except StopIteration:
                return
            except ClientError as exc:
                self._fail(exc)
                return
            value, error = None, None
            if isinstance(step, Started):
                self.started = True
                if self.on_started is not None:
                    self.on_started()
            elif isinstance(step, Connect | Call | Wait | Sleep):
                self._do(step)
                return
            else:
                self.callback(step)

    def _fail(self, exc: ClientError) -> None:
        self.error = exc
        self.stop()
        if self.on_error is not None:
            self.on_error(exc)

    def _do(self, step: Connect | Call | Wait | Sleep) -> None:
        if isinstance(step, Connect):
            self._open(step.conn)
        elif isinstance(step, Call):
            self._call(step)
        elif isinstance(step, Wait):
            self._waiting = True
            if step.seconds is not None:
                self._timer = GLib.timeout_add(int(step.seconds * 1000), self._timed_out)
        else:
            self._timer = GLib.timeout_add(int(step.seconds * 1000), self._timed_out)

    # The connection.
    def _open(self, conn: Conn) -> None:
        self._close()
        self._conn = conn
        flags = (
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
        )
        Gio.DBusConnection.new_for_address(self.address, flags, None, None, self._opened, conn)

    def _opened(self, _source: Any, result: Gio.AsyncResult, conn: Conn) -> None:
        try:
            bus = Gio.DBusConnection.new_for_address_finish(result)
        except GLib.Error as exc:
            self._resume(None, ConnectionError(exc.message))
            return
        if self._stopped or conn is not self._conn:
            bus.close(None, None, None)
            return
        self._bus = bus
        bus.set_exit_on_close(False)
        self._handlers = [bus.connect("closed", self._closed, conn)]
        # Every signal the bus sends us, in order; the session adds its own match rules.
        no_rule = Gio.DBusSignalFlags.NO_MATCH_RULE
        bus.signal_subscribe(None, None, None, None, None, no_rule, self._signal, conn)
        self._resume(None, None)

    def _close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            for handler in self._handlers:
                bus.disconnect(handler)
            bus.close(None, None, None)
        self._handlers = []

    def _signal(self, *args: Any) -> None:
        _bus, sender, _path, interface, member, params, conn = args
        body = params.unpack() if params is not None else ()
        signature = params.get_type_string()[1:-1] if params is not None else ""
        conn.on_signal(Signal(sender or "", interface, member, signature, tuple(body)))
        if conn is self._conn:
            self._wake()

    def _closed(self, _bus: Any, _remote: bool, _error: Any, conn: Conn) -> None:
        conn.on_closed()
        if conn is self._conn:
            self._wake()

    # Calls, waits and timers.
    def _call(self, call: Call) -> None:
        if self._bus is None:
            self._resume(None, ConnectionError("not connected"))
            return
        params = GLib.Variant(f"({call.signature})", tuple(_gvariant(list(call.body))))
        self._bus.call(
            call.destination,
            call.path,
            call.interface,
            call.member,
            params,
            None,
            Gio.DBusCallFlags.NONE,
            _NO_TIMEOUT,
            None,
            self._replied,
            self._conn,
        )

    def _replied(self, bus: Gio.DBusConnection, result: Gio.AsyncResult, conn: Conn) -> None:
        if conn is not self._conn:
            return  # an answer on a connection we closed
        try:
            reply = bus.call_finish(result)
        except GLib.Error as exc:
            name = Gio.DBusError.get_remote_error(exc)
            if name is None:
                self._resume(None, ConnectionError(exc.message))
            else:
                Gio.DBusError.strip_remote_error(exc)
                self._resume(None, CallFailed(name, exc.message))
            return
        self._resume(list(reply.unpack()), None)

    def _wake(self) -> None:
        if self._waiting:
            self._waiting = False
            self._cancel_timer()
            self._resume(None, None)

    def _timed_out(self) -> bool:
        self._timer = 0
        self._waiting = False
        self._resume(None, None)
        return False

    def _cancel_timer(self) -> None:
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
