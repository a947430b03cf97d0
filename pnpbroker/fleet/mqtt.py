"""An MQTT 5 session on paho-mqtt 2.x, driven by this asyncio loop (no thread of paho's own).

paho keeps every QoS 1 message until its PUBACK and sends them again, in order and with the DUP
flag, after each reconnection; it calls ``on_publish`` with the PUBACK's reason code. Here the
loop watches paho's socket (paho's ``on_socket_*`` callbacks, as in its ``loop_asyncio``
example), connecting runs in a worker thread (paho's connect, with its TCP and TLS handshake,
blocks), and :meth:`Session.run` reconnects with a growing pause, logging why each attempt
failed. paho ignores the server's Receive Maximum (and after a reconnection sends everything it
holds at once): callers keep :attr:`Session.in_flight` under :attr:`Session.window`, which
honours it, and publish only while :attr:`Session.connected`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pnpbroker.fleet.config import FleetConfig, read_secrets, tls_context

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
MISC_SECONDS = 1.0
CLOSE_SECONDS = 5.0
#: MQTT 5 DISCONNECT reason 4: the server publishes our will (status "offline") as we go.
WITH_WILL = 4


class Session:
    """One client id's connection to the MQTT broker, kept up until :meth:`close`.

    ``on_ack(token)`` is called for each PUBACK that accepts a message published with a token;
    ``on_refused(token, reason)`` when the server refuses one (e.g. 0x87, not authorized);
    ``on_connected(session_present)`` after each accepted CONNACK.
    """

    def __init__(
        self,
        cfg: FleetConfig,
        *,
        on_ack: Callable[[Any], None] = lambda token: None,
        on_refused: Callable[[Any, ReasonCode], None] = lambda token, reason: None,
        on_connected: Callable[[bool], None] = lambda present: None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_ack, self.on_refused, self.on_connected = on_ack, on_refused, on_connected
        self.window = cfg.window
        self.client = _client(cfg, will)
        self._tokens: dict[int, Any] = {}  # every QoS 1 message not acknowledged yet
        self.connected = asyncio.Event()
        self.room = asyncio.Event()  # set when in_flight drops under the window
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost = asyncio.Event()
        self._closing = False
        self._up = False  # accepted by the server, and not lost since
        self._misc: asyncio.Task[None] | None = None
        self._wire()

    def _wire(self) -> None:
        client = self.client
        client.on_socket_open = lambda c, u, sock: self._soon(self._opened, sock)
        client.on_socket_close = lambda c, u, sock: self._soon(self._closed, sock)
        client.on_socket_register_write = lambda c, u, sock: self._soon(self._want_write, sock)
        client.on_socket_unregister_write = lambda c, u, sock: self._soon(self._wrote, sock)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.cfg.tls else "mqtt"
        return f"{scheme}://{self.cfg.broker}:{self.cfg.mqtt_port}"

    # paho's socket, on this loop.
    def _soon(self, func: Callable[[Any], None], sock: Any) -> None:
        if threading.get_ident() == self._thread:
            func(sock)
        else:
            self._loop.call_soon_threadsafe(func, sock)

    def _opened(self, sock: socket.socket) -> None:
        self._loop.add_reader(sock, self.client.loop_read)
        self._misc = self._loop.create_task(self._keepalive())

    def _closed(self, sock: socket.socket) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
        self.connected.clear()
        self._lost.set()

    def _want_write(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, self.client.loop_write)

    def _wrote(self, sock: socket.socket) -> None:
        self._loop.remove_writer(sock)

    async def _keepalive(self) -> None:
        """paho's timers: PINGREQ when idle, a dead connection closed after keepalive."""
        while True:
            await asyncio.sleep(MISC_SECONDS)
            if self.client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                return

    # paho's callbacks (on this loop: they come from loop_read/loop_write/loop_misc).
    def _on_connect(self, c: Any, u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not reason.is_failure:
            maximum = getattr(props, "ReceiveMaximum", None) or self.cfg.window
            self.window = min(self.cfg.window, maximum)
            self.connected.set()
            self._up = True
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)
        if not reason.is_failure:
            self.on_connected(bool(flags.session_present))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not self._closing and self._up:
            log.warning("MQTT connection to %s lost: %s", self.where, reason)
        self._up = False
        self.connected.clear()
        self._lost.set()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        token = self._tokens.pop(mid, None)
        if self.in_flight < self.window:
            self.room.set()
        if token is None:
            return
        if reason.is_failure:
            self.on_refused(token, reason)
        else:
            self.on_ack(token)

    # What callers do.
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        token: Any = None,
        retain: bool = False,
        user: Sequence[tuple[str, str]] = (),
    ) -> None:
        """QoS 1; kept by paho until acknowledged, whether connected now or not."""
        props = UserProperties(user) if user else None
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"paho refused to queue a message: {paho.error_string(info.rc)}")
        self._tokens[info.mid] = token

    @property
    def in_flight(self) -> int:
        return len(self._tokens)

    def has_room(self, reserve: int = 0) -> bool:
        """Connected, with fewer than ``window - reserve`` messages in flight."""
        return self.connected.is_set() and self.in_flight < max(1, self.window - reserve)

    async def wait_room(self, reserve: int = 0) -> None:
        """Until :meth:`has_room`."""
        while not self.has_room(reserve):
            if not self.connected.is_set():
                await self.connected.wait()
                continue
            self.room.clear()
            await self.room.wait()

    async def run(self) -> None:
        """Connect, and reconnect after each loss, until :meth:`close`."""
        pause = BACKOFF_FIRST
        while not self._closing:
            if await self._connect_once():
                pause = BACKOFF_FIRST
                await self._lost.wait()
                if self._closing:
                    break
            log.info("reconnecting to %s in %.1f s", self.where, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX)

    async def _connect_once(self) -> bool:
        """One attempt; True once the server accepted us. Errors are logged, clearly."""
        self._connack = self._loop.create_future()
        try:
            await self._loop.run_in_executor(None, self._connect_blocking)
            self._lost.clear()  # after the old socket's close, which the worker queued first
            reason = await self._connack_or_loss()
        except ssl.SSLCertVerificationError as exc:
            log.error("TLS: the certificate of %s: %s", self.where, exc.verify_message or exc)
            return False
        except (OSError, TimeoutError) as exc:
            log.error("cannot connect to %s: %s", self.where, exc or "no CONNACK in time")
            self.client.disconnect()
            return False
        if reason is None:
            hint = " (with TLS: did it refuse our certificate?)" if self.cfg.tls else ""
            log.error("%s closed the connection before accepting it%s", self.where, hint)
            return False
        if reason.is_failure:
            who, hint = self.cfg.mqtt_client_id, ""
            if reason.value in (0x86, 0x87):  # bad user name or password; not authorized
                hint = "; check the username and password (secrets) or the client certificate"
            log.error("%s refused us (client id %r): %s%s", self.where, who, reason, hint)
            return False
        log.info("connected to %s as %r", self.where, self.cfg.mqtt_client_id)
        return True

    async def _connack_or_loss(self) -> ReasonCode | None:
        assert self._connack is not None
        connack: asyncio.Future[Any] = self._connack
        lost: asyncio.Future[Any] = self._loop.create_task(self._lost.wait())
        done, _ = await asyncio.wait(
            [connack, lost],
            timeout=max(self.cfg.keepalive, 10),
            return_when=asyncio.FIRST_COMPLETED,
        )
        lost.cancel()
        if self._connack in done:
            return self._connack.result()
        if lost in done:
            return None
        raise TimeoutError("no CONNACK in time")

    def _connect_blocking(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry
        self.client.connect(
            self.cfg.broker,
            self.cfg.mqtt_port,
            keepalive=self.cfg.keepalive,
            clean_start=False,
            properties=props,
        )

    async def close(self) -> None:
        """DISCONNECT with reason 4 (the server publishes the will), and stop reconnecting."""
        self._closing = True
        self._lost.set()
        if self.client.is_connected():
            self._lost.clear()
            self.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=WITH_WILL))
            try:
                await asyncio.wait_for(self._lost.wait(), CLOSE_SECONDS)
            except TimeoutError:
                log.warning("%s did not close the connection in time", self.where)
        self.client.loop_misc()
        if self._misc is not None:
            self._misc.cancel()


class UserProperties(Properties):
    """A PUBLISH's MQTT 5 user properties (identifier 0x26), encoded once.

    paho packs a message's properties at each send (and resend) with ``pack()``, and building a
    ``Properties`` costs more than the rest of a publish; paho uses nothing else of a PUBLISH's
    properties but ``pack()`` and ``str()`` (its debug log). tests/test_fleet_units.py holds the
    bytes equal to paho's own encoding.
    """

    packed: bytes
    pairs: list[tuple[str, str]]

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:  # no super(): see above
        body = b"".join(b"\x26" + _utf8(key) + _utf8(value) for key, value in pairs)
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "pairs", list(pairs))
        object.__setattr__(self, "packed", _varint(len(body)) + body)

    def pack(self) -> bytes:
        return self.packed

    def __str__(self) -> str:
        return f"[UserProperty : {self.pairs}]"


def _varint(number: int) -> bytes:
    """MQTT's variable byte integer: 7 bits a byte, the high bit says more follow."""
    out = bytearray()
    while True:
        number, digit = divmod(number, 128)
        out.append(digit | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _client(cfg: FleetConfig, will: tuple[str, bytes] | None) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.mqtt_client_id,
        protocol=paho.MQTTv5,
    )
    credentials = read_secrets(cfg.secrets)
    if credentials.username is not None:
        client.username_pw_set(credentials.username, credentials.password)
    context = tls_context(cfg)
    if context is not None:
        client.tls_set_context(context)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.enable_logger(logging.getLogger("pnpbroker.fleet.paho"))  # its debug lines with -v
    client.max_queued_messages_set(0)  # unbounded in paho: callers bound what they publish
    client.max_inflight_messages_set(0)
    return client
