"""A private dbus-daemon for one measurement: never the system bus.

The config is minimal: one ``unix:path`` socket in a temp dir, EXTERNAL auth, a policy that allows
everything (owning any name included, so the broker can take ``org.pnp.Broker``) and the daemon's
compiled-in limits otherwise, the same as the system bus uses for what ``system.conf`` leaves out.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow send_type="signal"/>
  </policy>
</busconfig>
"""


@contextmanager
def private_bus() -> Iterator[str]:
    """Start a dbus-daemon in a temp dir; yield its address; stop it on the way out."""
    with tempfile.TemporaryDirectory(prefix="pnp-bench-bus-") as tmp:
        config = Path(tmp) / "bus.conf"
        socket = Path(tmp) / "bus.sock"
        config.write_text(CONFIG.format(socket=socket))
        argv = ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().strip()
            if not address:
                raise RuntimeError("dbus-daemon printed no address")
            yield address
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def daemon_version() -> str:
    out = subprocess.run(["dbus-daemon", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0].rsplit(" ", 1)[-1] if out.stdout else "?"
