"""A Debian 12 machine booted with systemd as PID 1, for tests under a real service manager.

The root file system is made once with ``debootstrap`` and cached outside the checkout (in
``$PNPBROKER_TEST_CACHE``, default /var/cache/pnpbroker-tests), under a name that is the hash of
everything that goes into it; a build goes to a temporary directory under a lock and is renamed
into place when complete, so a crash leaves no half-made cache. Each boot is
``systemd-nspawn --boot --volatile=overlay``: the cached tree is the read-only lower layer and
every change the tests make lives in a tmpfs that goes with the machine, so boots are
independent. ``--private-network`` gives the machine its own network namespace: ifb links made
there produce net uevents only it sees (other devices' uevents from the host still arrive).

The machine is reached with ``nsenter`` into its PID 1's namespaces, with a clean environment.
Long-running helpers inside (``busctl monitor``) run as transient units (``systemd-run``) that
write into a directory shared with the host, so stopping them is systemd's job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

CACHE = Path(os.environ.get("PNPBROKER_TEST_CACHE", "/var/cache/pnpbroker-tests"))
MIRROR = os.environ.get("PNPBROKER_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
#: What a small Debian 12 system with systemd, the system bus and polkit has; and Debian's
#: mosquitto, the MQTT broker of the fleet tests (the machine is offline: it is in the tree,
#: disabled, so machines that do not use it boot as before).
PACKAGES = (
    "systemd,systemd-sysv,libpam-systemd,dbus,polkitd,python3,python3-venv,iproute2,mosquitto"
)
#: Units the packages enable that the tests start themselves.
DISABLED = ("mosquitto.service",)
#: Bump when the way the tree is made changes (the hash then names a new tree).
RECIPE = 2
NSPAWN_DIR = Path("/run/systemd/nspawn")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the host directory shared with a machine appears inside it.
SHARED = Path("/mnt/pnpt")

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll ``check`` until it returns something other than None/False; TimeoutError naming
    ``what`` otherwise. The pause between polls grows from 10 ms: a condition, not a sleep."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def rootfs_key() -> str:
    recipe = json.dumps([RECIPE, SUITE, MIRROR, PACKAGES, DISABLED, "minbase"])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rootfs() -> Path:
    """The cached root file system, built now (about a minute, with network) if missing."""
    tree = CACHE / f"rootfs-{SUITE}-{rootfs_key()}"
    if (tree / "etc/os-release").exists():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same tree
        if not (tree / "etc/os-release").exists():
            _debootstrap(tree)
    return tree


def _debootstrap(tree: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE))
    try:
        command = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE]
        subprocess.run(
            [*command, str(work / "root"), MIRROR],
            check=True, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        # No host name from the host, no downloaded packages kept: a smaller, neutral tree.
        (work / "root/etc/hostname").write_text("pnpt\n")
        subprocess.run(
            ["systemctl", f"--root={work / 'root'}", "disable", "--quiet", *DISABLED],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(work / "root/var/cache/apt/archives", ignore_errors=True)
        (work / "root").rename(tree)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"debootstrap failed:\n{exc.stdout}\n{exc.stderr}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ensure_nspawn_dir() -> None:
    """systemd-nspawn on a host without systemd needs /run/systemd/nspawn to be a mount."""
    NSPAWN_DIR.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(NSPAWN_DIR)], check=False).returncode != 0:
        subprocess.run(["mount", "-t", "tmpfs", "pnpt-nspawn", str(NSPAWN_DIR)], check=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Machine:
    """One boot of the cached tree; ``run`` executes inside it, ``shared`` is seen by both."""

    def __init__(self, tree: Path, binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.tree = tree
        self.name = f"pnpt-{secrets.token_hex(4)}"
        self.binds = list(binds)
        self.shared = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.shared.chmod(0o755)
        self.log_path = self.shared / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = 180.0) -> Machine:
        _ensure_nspawn_dir()
        binds = [f"--bind-ro={host}:{inside}" for host, inside in self.binds]
        argv = [
            "systemd-nspawn", "--boot", "--private-network", "--register=no", "--keep-unit",
            "--volatile=overlay", "--console=read-only", f"--machine={self.name}",
            f"--directory={self.tree}", f"--bind={self.shared}:{SHARED}", *binds,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.leader = wait_for("the machine's PID 1", self._find_leader, timeout)
        state = wait_for("the machine to finish booting", self._booted, timeout)
        if state not in ("running", "degraded"):
            raise RuntimeError(f"machine state {state!r}:\n{self.console()}")
        return self

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
        for child in _children(self.proc.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
        return None

    def _booted(self) -> str | None:
        done = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=150)
        state = done.stdout.strip()
        return state if state in ("running", "degraded", "maintenance") else None

    def command(self, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        """``argv`` as a host command line that runs it inside, with a clean environment."""
        variables = [
            f"{k}={v}" for k, v in {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}.items()
        ]
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *variables, *argv]

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float = 300.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run inside (a string goes to ``sh -c``); CalledProcessError with its output if
        ``check`` and it failed."""
        argv = ["sh", "-c", argv] if isinstance(argv, str) else argv
        done = subprocess.run(
            self.command(argv, env), input=input, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def netns(self, argv: Sequence[str], input: str | None = None) -> None:
        """Run a host program (``ip``) in the machine's network namespace only."""
        subprocess.run(
            ["nsenter", "-t", str(self.leader), "-n", *argv],
            input=input, text=True, check=True, capture_output=True, timeout=300,
        )  # fmt: skip

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", *args]).stdout

    def console(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def shutdown(self, timeout: float = 120.0) -> None:
        """SIGTERM to systemd-nspawn (an orderly poweroff), then SIGKILL to its group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(60)
        self.proc = None

    def __enter__(self) -> Machine:
        try:
            return self.boot()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
        shutil.rmtree(self.shared, ignore_errors=True)


@contextlib.contextmanager
def machine(binds: Sequence[tuple[Path, str]] = ()) -> Iterator[Machine]:
    """A booted machine from the cached tree (built first if needed), shut down afterwards."""
    with Machine(rootfs(), binds) as booted:
        yield booted
