"""The fleet in tests and bench/: the broker with its feed, ``pnpbroker forward`` and
``pnpbroker fleet-monitor`` as real processes, beside a real mosquitto (support.mosquitto)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from support.netns import NetNS

Line = dict[str, Any]


def write_toml(path: Path, values: Mapping[str, object]) -> Path:
    """A flat TOML file of strings and numbers."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class FleetMonitorProcess:
    """``pnpbroker fleet-monitor --json``: its lines (events and reports) as they come."""

    def __init__(self, config: Path, netns: NetNS | None = None, timeout: float = 60.0) -> None:
        prefix = netns.exec_prefix() if netns is not None else []
        self.log_path = config.with_suffix(".log")
        argv = [*prefix, sys.executable, "-m", "pnpbroker", "fleet-monitor", "-c", str(config)]
        notify = config.with_suffix(".notify")
        notify.unlink(missing_ok=True)
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ready.bind(str(notify))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "--json"], stdout=subprocess.PIPE, stderr=log, env=env
            )
        self.lines: list[Line] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        with ready:  # READY=1: subscribed (SUBACK)
            ready.settimeout(timeout)
            try:
                ready.recv(64)
            except TimeoutError:
                self.proc.kill()
                raise TimeoutError(f"fleet-monitor not subscribed: {self.log()}") from None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(json.loads(raw))
                self._changed.notify_all()

    @property
    def events(self) -> list[Line]:
        with self._changed:
            return [line for line in self.lines if "report" not in line]

    @property
    def reports(self) -> list[Line]:
        with self._changed:
            return [line for line in self.lines if "report" in line]

    def wait_for(self, done: Callable[[list[Line]], bool], timeout: float = 120.0) -> None:
        """Until ``done(events)``; TimeoutError with what came, and the log, otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done([line for line in self.lines if "report" not in line]):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(
                        f"fleet-monitor: {len(self.lines)} lines, last {self.lines[-2:]}; "
                        f"exit {self.proc.poll()}; log:\n{self.log()}"
                    )
                self._changed.wait(min(left, 1.0))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(30)
        self._close()
        return code

    def _close(self) -> None:
        self._thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> FleetMonitorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._close()


def sequences(events: list[Line], host: str) -> list[int]:
    return [int(e["sequence"]) for e in events if e["host"] == host]


def has_through(host: str, last: int) -> Callable[[list[Line]], bool]:
    """A ``wait_for`` predicate: ``host``'s events reached sequence ``last``."""

    def check(events: list[Line]) -> bool:
        return any(e["host"] == host and int(e["sequence"]) >= last for e in events)

    return check


_RETAINED = """
import json, sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, topic, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3]
got = {}
def on_connect(c, u, f, r, p):
    c.subscribe([(topic, 1), (marker, 1)])
def on_subscribe(c, u, mid, reasons, p):
    c.publish(marker, b"", qos=1)  # comes after every retained message of the subscription
def on_message(c, u, m):
    if m.topic == marker:
        print(json.dumps(got)); c.disconnect()
    elif m.retain:
        got[m.topic] = m.payload.decode()
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
"""


def retained(netns: NetNS, port: int, topic: str) -> dict[str, str]:
    """The retained messages a new subscriber to ``topic`` gets at once (anonymous, in
    ``netns``): topic -> payload."""
    marker = "pnpt/marker"
    argv = [*netns.exec_prefix(), sys.executable, "-c", _RETAINED, str(port), topic, marker]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    found: dict[str, str] = json.loads(done.stdout)
    return found
