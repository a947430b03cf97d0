"""Ask polkit whether a bus peer may use a privileged method.

The subject is always the caller's unique bus name (``system-bus-name``), never a PID: polkitd
resolves the name through the bus daemon, which cannot be raced like a PID. polkit may ask the
caller's agent for a password only when the caller said it may wait for that (the
ALLOW_INTERACTIVE_AUTHORIZATION flag of its method call, as systemd does). polkitd has
:data:`TIMEOUT` seconds to answer (:data:`INTERACTIVE_TIMEOUT` when a person may be typing);
after that the caller is denied with a message saying so. When polkitd is not there (no owner
and not activatable), only uid 0 is allowed; anything else that goes wrong denies.
"""

import asyncio
import logging
from typing import Any, ClassVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from pnpbroker.bus.wire import to_bus_daemon
from pnpbroker.errors import BrokerError
from pnpbroker.names import ERROR_NOT_AUTHORIZED

logger = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1
#: Seconds polkitd has to answer: the D-Bus default method call timeout, and a person's time.
TIMEOUT, INTERACTIVE_TIMEOUT = 25.0, 300.0

# Replies from the bus daemon that mean "no polkitd here", rather than "polkitd failed".
_ABSENT_ERRORS = frozenset(
    {"org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"}
)
_SPAWN_ERROR_PREFIX = "org.freedesktop.DBus.Error.Spawn."


class NotAuthorized(PermissionError, BrokerError):
    """The caller may not perform ``action_id``; ``str()`` is a message fit for the client.

    ``error_name`` is the D-Bus error the service should reply with.
    """

    error_name: ClassVar[str] = ERROR_NOT_AUTHORIZED

    def __init__(self, action_id: str, reason: str) -> None:
        super().__init__(f"not authorized for {action_id}: {reason}")
        self.action_id = action_id
        self.reason = reason


class Authority:
    """Checks callers against polkit over an already connected bus (the broker's own)."""

    def __init__(
        self, bus: MessageBus, timeout: float = TIMEOUT, interactive: float = INTERACTIVE_TIMEOUT
    ) -> None:
        self._bus = bus
        self._timeouts = {False: timeout, True: interactive}
        self._absence_logged = False

    async def check(self, sender: str, action_id: str, interactive: bool = False) -> None:
        """Return if ``sender`` (a unique bus name) may do ``action_id``, else raise NotAuthorized.

        ``interactive``: the caller allows interactive authorization (an agent may ask its user
        for a password), so polkit may take as long as that person needs, up to its timeout.
        """
        message = _check_authorization(sender, action_id, interactive)
        reply = await self._call(message, action_id, self._timeouts[interactive])
        if _polkit_absent(reply):
            await self._check_root(sender, action_id)
            return
        _raise_on_error(reply, action_id, "polkit")
        self._absence_logged = False
        _judge(reply, action_id)

    async def _check_root(self, sender: str, action_id: str) -> None:
        """Without polkitd, let only uid 0 through; log that once until polkitd answers again."""
        if not self._absence_logged:
            logger.warning("polkitd is not running: only root may use privileged methods")
            self._absence_logged = True
        reply = await self._call(_unix_user(sender), action_id, self._timeouts[False])
        _raise_on_error(reply, action_id, "the bus daemon")
        if reply.signature != "u" or reply.body[0] != 0:
            raise NotAuthorized(action_id, "polkitd is not running and only root is allowed")

    async def _call(self, message: Message, action_id: str, seconds: float) -> Message:
        """Send a method call; a transport failure or no answer in ``seconds`` becomes a denial,
        logged here in full.

        A bus that is no longer connected is not called at all: dbus-fast 5 fails messily on a
        connection that is still closing (a broken-pipe future nobody awaits).
        """
        if not self._bus.connected:
            logger.warning("authorization check for %s: the bus is disconnected", action_id)
            raise NotAuthorized(action_id, "the authorization check failed")
        try:
            async with asyncio.timeout(seconds):
                return await self._bus.call(message)
        except TimeoutError:
            logger.warning("authorization check for %s: no answer in %g s", action_id, seconds)
            raise NotAuthorized(action_id, f"polkit did not answer within {seconds:g} s") from None
        except Exception:
            logger.exception("authorization check for %s failed", action_id)
            raise NotAuthorized(action_id, "the authorization check failed") from None


def _check_authorization(sender: str, action_id: str, interactive: bool) -> Message:
    subject = ["system-bus-name", {"name": Variant("s", sender)}]
    flags = ALLOW_USER_INTERACTION if interactive else 0
    return Message(
        destination=POLKIT_NAME,
        path=POLKIT_PATH,
        interface=POLKIT_INTERFACE,
        member="CheckAuthorization",
        signature="(sa{sv})sa{ss}us",
        body=[subject, action_id, {}, flags, ""],
    )


def _unix_user(sender: str) -> Message:
    return to_bus_daemon("GetConnectionUnixUser", "s", [sender])


def _polkit_absent(reply: Message) -> bool:
    """An error from the bus daemon itself saying nobody has (or can get) polkit's name.

    polkitd forwards some bus errors under the same names (NameHasNoOwner when the caller has
    gone), so the reply's sender tells "no polkitd" from "polkitd said no".
    """
    if reply.message_type is not MessageType.ERROR or reply.sender != "org.freedesktop.DBus":
        return False
    name = reply.error_name or ""
    return name in _ABSENT_ERRORS or name.startswith(_SPAWN_ERROR_PREFIX)


def _raise_on_error(reply: Message, action_id: str, peer: str) -> None:
    """Turn an error reply into a denial that names the action; the detail goes to the log."""
    if reply.message_type is not MessageType.ERROR:
        return
    detail = reply.body[0] if reply.signature.startswith("s") else ""
    logger.warning("%s refused the check for %s: %s %s", peer, action_id, reply.error_name, detail)
    raise NotAuthorized(action_id, f"{peer} could not check it ({reply.error_name})")


def _judge(reply: Message, action_id: str) -> None:
    """Read polkit's (is_authorized, is_challenge, details) and raise unless authorized."""
    if reply.signature != "(bba{ss})":
        raise NotAuthorized(action_id, f"unexpected polkit reply {reply.signature!r}")
    is_authorized, is_challenge, details = reply.body[0]
    if is_authorized:
        return
    raise NotAuthorized(action_id, _denial_reason(is_challenge, details))


def _denial_reason(is_challenge: bool, details: dict[str, Any]) -> str:
    if details.get("polkit.dismissed") == "true":
        return "authentication was dismissed"
    if is_challenge:
        return "authentication is required, but no authentication agent answered"
    return "denied by polkit"
