"""A real mosquitto (Debian's), started by a test: its own config, persistence, TLS and ACLs.

It runs as root (``user root``: mosquitto would otherwise switch to the ``mosquitto`` user,
who cannot read the test's files), in a network namespace if given, with its log in a file;
readiness is its own "running" log line. Persistence is on: a SIGTERM saves the sessions,
their queues and the retained messages, which the next start reads back.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from support.netns import NetNS

READY_LINE = "running"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


class Mosquitto:
    """``mosquitto -c FILE``; :meth:`stop` (SIGTERM, saves), :meth:`kill` (SIGKILL)."""

    def __init__(
        self,
        workdir: Path,
        *,
        address: str = "127.0.0.1",
        port: int = 1883,
        netns: NetNS | None = None,
        tls: TlsFiles | None = None,
        passwords: Mapping[str, str] | None = None,
        acl: str | None = None,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address, self.port, self.netns = address, port, netns
        self.log_path = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(self._config(tls, passwords, acl))
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(
        self, tls: TlsFiles | None, passwords: Mapping[str, str] | None, acl: str | None
    ) -> str:
        lines = [
            "user root",
            f"listener {self.port} {self.address}",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Queue what an absent persistent session misses (the default keeps 1000). Not 0
            # (no limit): with 0, mosquitto 2.0.11 drops a client whose QoS 1 PUBLISH the ACL
            # denies instead of answering PUBACK 0x87.
            "max_queued_messages 1000000",
        ]
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.cert}",
                f"keyfile {tls.key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if passwords is not None:
            path = self.dir / "passwords"
            path.write_text("")
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True)
            lines.append(f"password_file {path}")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        anonymous = tls is None and passwords is None
        lines.append(f"allow_anonymous {'true' if anonymous else 'false'}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> Mosquitto:
        seen = self.log().count(READY_LINE)
        prefix = self.netns.exec_prefix() if self.netns is not None else []
        with (self.dir / "stderr").open("ab") as err:
            self.proc = subprocess.Popen(
                [*prefix, "mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + timeout
        while self.log().count(READY_LINE) <= seen:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto not running after {timeout} s: {self.log()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stderr(self) -> str:
        path = self.dir / "stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


class CertificateAuthority:
    """A throw-away CA made with openssl; issues server and client certificates."""

    def __init__(self, workdir: Path, name: str = "pnpt-ca") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        _openssl(
            "req", "-x509", *_EC, "-keyout", self.key, "-out", self.cert,
            "-subj", f"/CN={name}", "-days", "2",
        )  # fmt: skip

    def issue(self, name: str, *, ips: tuple[str, ...] = (), client: bool = False) -> TlsFiles:
        """A certificate whose CN is ``name`` (with ``ips`` as subjectAltName, for a server)."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        _openssl("req", *_EC, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        names = ",".join([f"DNS:{name}", *(f"IP:{ip}" for ip in ips)])
        usage = "clientAuth" if client else "serverAuth"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={names}\nextendedKeyUsage={usage}\n")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext,
        )  # fmt: skip
        return TlsFiles(self.cert, cert, key)


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
