"""A private system-like dbus-daemon for tests.

The daemon enforces the same default policy as Debian's /usr/share/dbus-1/system.conf and includes
the project's own dbus/org.pnp.Broker.conf, so a test that passes here says something about the
installed bus policy. It listens in a temporary directory, never on /run/dbus/system_bus_socket.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import escape

from support import REPO_ROOT

_DAEMON = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
POLICY_FILE = REPO_ROOT / "dbus" / "org.pnp.Broker.conf"
POLKIT_BUS_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
ADDRESS_ENV = "DBUS_SYSTEM_BUS_ADDRESS"

# Debian's system.conf, without what only makes sense for the machine's one bus: <user>, <fork>,
# service activation, pidfile, syslog and the system.d include directories.
_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>{auth}</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Containers1"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
{limits}{includes}</busconfig>
"""


def render_config(
    socket_path: Path,
    includes: Sequence[Path],
    *,
    auth: str = "EXTERNAL",
    limits: Mapping[str, int] | None = None,
) -> str:
    """The daemon configuration text: system defaults, our socket, then the policy includes.

    ``auth`` is the one mechanism the daemon offers; ``limits`` are ``<limit>`` elements
    (``max_outgoing_bytes``, ...), for tests of what the daemon does at its limits.
    """
    lines = "".join(f"  <include>{escape(str(p))}</include>\n" for p in includes)
    limit_lines = "".join(
        f'  <limit name="{escape(name)}">{value}</limit>\n'
        for name, value in (limits or {}).items()
    )
    return _CONFIG.format(
        socket=escape(str(socket_path)), auth=escape(auth), limits=limit_lines, includes=lines
    )


class SystemBus:
    """One private system-like bus: `start()` returns once the daemon accepts connections.

    Runs as the current user (root in tests) with no <user> element, so `<policy user="root">`
    rules apply to the test process and not to clients started as `nobody`.
    """

    def __init__(
        self,
        extra_includes: Sequence[Path] = (),
        *,
        timeout: float = 10.0,
        policy: bool = True,
        auth: str = "EXTERNAL",
        limits: Mapping[str, int] | None = None,
    ) -> None:
        self.extra_includes = list(extra_includes)
        self.policy = policy
        self.auth = auth
        self.limits = dict(limits or {})
        self.timeout = timeout
        self.directory = Path(tempfile.mkdtemp(prefix="pnpt-bus-"))
        # mkdtemp makes 0700; clients running as `nobody` must reach the socket.
        self.directory.chmod(0o755)
        self.socket_path = self.directory / "system_bus_socket"
        self.config_path = self.directory / "system.conf"
        self.log_path = self.directory / "dbus-daemon.log"
        self.address = f"unix:path={self.socket_path}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def includes(self) -> list[Path]:
        """The policy files included: ours (unless ``policy`` is off), then the extra ones."""
        return [*([POLICY_FILE] if self.policy else []), *self.extra_includes]

    def write_config(self) -> None:
        text = render_config(self.socket_path, self.includes, auth=self.auth, limits=self.limits)
        self.config_path.write_text(text)

    def start(self) -> SystemBus:
        """Write the config, start dbus-daemon and wait for it to print its address."""
        self.write_config()
        read_fd, write_fd = os.pipe()
        try:
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        "dbus-daemon",
                        f"--config-file={self.config_path}",
                        f"--print-address={write_fd}",
                        "--nofork",
                        "--nosyslog",
                    ],
                    pass_fds=(write_fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            os.close(write_fd)
            write_fd = -1
            self._read_address(read_fd)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        return self

    def _read_address(self, fd: int) -> str:
        """Block until the daemon prints its address (it listens by then) or gives up."""
        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], self.timeout)
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                raise RuntimeError(f"dbus-daemon did not start: {self.log()!r}")
            data += chunk
        return data.decode().strip()

    def log(self) -> str:
        """What the daemon wrote to stdout/stderr (policy warnings end up here)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def env(self) -> dict[str, str]:
        """The environment entry that points a system-bus client at this bus."""
        return {ADDRESS_ENV: self.address}

    def name_has_owner(self, name: str) -> bool:
        """Ask the bus daemon itself (via busctl) whether `name` is owned right now."""
        return self.busctl("call", *_DAEMON, "NameHasOwner", "s", name) == ["b", "true"]

    def reload(self) -> None:
        """Write the configuration again (``policy`` may have changed) and have the running
        daemon re-read it, as ``systemctl reload dbus`` does (``ReloadConfig``)."""
        self.write_config()
        self.busctl("call", *_DAEMON, "ReloadConfig")

    def busctl(self, *args: str) -> list[str]:
        """``busctl --address=... ARGS`` as root; its output split into words."""
        out = subprocess.run(
            ["busctl", f"--address={self.address}", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=self.timeout,
        )
        return out.stdout.split()

    def connections_of(self, pid: int) -> int:
        """How many connections the daemon has from process ``pid`` (ListNames, then the pid of
        each unique name): a process that leaks connections shows more than one."""
        names = self.busctl("--json=short", "call", *_DAEMON, "ListNames")
        found = 0
        for name in json.loads(" ".join(names))["data"][0]:
            if not name.startswith(":"):
                continue
            try:
                words = self.busctl("call", *_DAEMON, "GetConnectionUnixProcessID", "s", name)
            except subprocess.CalledProcessError:  # gone meanwhile
                continue
            found += words == ["u", str(pid)]
        return found

    def crash(self) -> None:
        """SIGKILL the daemon, as a crash would; keep the directory so start() can follow."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.socket_path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the daemon (TERM, then KILL) and remove its directory. Safe to call twice."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SystemBus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
