"""``pnpbroker fleet-monitor``'s work: subscribe to every host's events with a persistent
session, check each host's sequence (:mod:`.tracker`), print events and reports.

The session is persistent (clean start off, a session expiry, QoS 1): while this monitor is
away, the MQTT broker queues what it missed, and delivers it at the next connection. paho
acknowledges each message after :meth:`FleetMonitor.message` returned, so a line is printed
before its PUBACK.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pnpbroker.fleet import frames
from pnpbroker.fleet.config import FleetConfig
from pnpbroker.fleet.mqtt import Session
from pnpbroker.fleet.tracker import Report, Tracker
from pnpbroker.notify import sd_notify

log = logging.getLogger(__name__)


class FleetMonitor:
    def __init__(self, cfg: FleetConfig, emit: Callable[[str], None], as_json: bool) -> None:
        self.cfg = cfg
        self.emit, self.as_json = emit, as_json
        self.tracker = Tracker()
        self.topic = f"{cfg.prefix}/+/events/#"
        self.session = Session(cfg, on_connected=self._subscribe)
        self.session.client.on_message = self.message
        self.session.client.on_subscribe = self._subscribed

    def _subscribe(self, session_present: bool) -> None:
        if not session_present:
            log.info("a new session: only what is published from now on reaches it")
        self.session.client.subscribe(self.topic, qos=1)

    def _subscribed(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            log.error(
                "%s refused the subscription to %s: %s",
                self.session.where,
                self.topic,
                ", ".join(map(str, reasons)),
            )
            return
        log.info("subscribed to %s", self.topic)
        sd_notify("READY=1")

    def message(self, client: Any, userdata: Any, msg: Any) -> None:
        host = msg.topic.split("/")[len(self.cfg.prefix.split("/"))]
        try:
            payload = json.loads(msg.payload)
            lost = msg.topic.endswith("/" + frames.LOST_TOPIC)
            first = payload["first"] if lost else payload["sequence"]
            last = payload["last"] if lost else payload["sequence"]
            journal_id = payload["journal_id"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s: not a pnpbroker event (%s): %.80r", msg.topic, exc, msg.payload)
            return
        user = dict(getattr(msg.properties, "UserProperty", None) or [])
        if user.get("journal_id") != journal_id or user.get("sequence") != str(last):
            log.error("%s: user properties %s disagree with the payload", msg.topic, user)
            self._report(Report("properties", host, journal_id, first, last))
        new, reports = self.tracker.take(host, journal_id, first, last, lost)
        for report in reports:
            self._report(report)
        if new and not lost:
            self.emit(self._line(host, payload))

    def _line(self, host: str, payload: dict[str, Any]) -> str:
        if self.as_json:
            return json.dumps(payload, ensure_ascii=False)
        return (
            f"{host} {payload['sequence']} {payload['action']} {payload['devpath']} "
            f"({payload['subsystem']})"
        )

    def _report(self, report: Report) -> None:
        if report.kind in ("gap", "lost", "late"):
            log.error("%s", report)
        else:
            log.warning("%s", report)
        if self.as_json:
            self.emit(
                json.dumps(
                    {
                        "report": report.kind,
                        "host": report.host,
                        "journal_id": report.journal_id,
                        "first": report.first,
                        "last": report.last,
                    }
                )
            )
