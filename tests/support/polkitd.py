"""Run the real polkitd on a private test bus, with the project's actions and the test's rules.

polkitd only reads its actions from /usr/share/polkit-1/actions and its rules from
/etc/polkit-1/rules.d (and /usr/share/polkit-1/rules.d), so it runs in a private mount namespace
where temporary directories are bind-mounted over those two: the host's files stay untouched.
polkitd starts as root and drops to the user ``polkitd``, so what it reads after that (the bind
mounted directories and the bus socket) must be readable by that user. The bus must include
``POLKIT_BUS_CONF`` so that ``polkitd`` may own org.freedesktop.PolicyKit1.
"""

import asyncio
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from support import REPO_ROOT

POLICY_FILE = REPO_ROOT / "polkit" / "org.pnp.Broker.policy"
POLKITD = Path("/usr/lib/polkit-1/polkitd")
POLKIT_BUS_CONF = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
POLKIT_NAME = "org.freedesktop.PolicyKit1"
ACTIONS_DIR = "/usr/share/polkit-1/actions"
RULES_DIR = "/etc/polkit-1/rules.d"

# Runs inside `unshare --mount`: $1 actions dir, $2 rules dir.
_MOUNT_AND_EXEC = f"""set -e
mount --bind "$1" {ACTIONS_DIR}
mount --bind "$2" {RULES_DIR}
exec {POLKITD} --no-debug
"""


class Polkitd:
    """One polkitd process; ``async with Polkitd(address, rules={...})`` waits until it answers.

    ``rules`` maps file names (ending in ``.rules``) to JavaScript polkit rules.
    ``log`` is polkitd's stderr, worth reading when a test fails.
    """

    def __init__(
        self, bus_address: str, rules: Mapping[str, str] | None = None, *, timeout: float = 30
    ) -> None:
        self.bus_address = bus_address
        self.timeout = timeout
        self._rules = dict(rules or {})
        self._dir = Path(tempfile.mkdtemp(prefix="pnpt-polkitd-"))
        self.log = self._dir / "polkitd.log"
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "Polkitd":
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start polkitd and return once it owns its bus name (it has exported its object)."""
        actions, rules = self._prepare()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}
        with self.log.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", _MOUNT_AND_EXEC, "polkitd-mounts", str(actions), str(rules),
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            async with asyncio.timeout(self.timeout):
                await self._wait_for_name(self._process)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop polkitd (SIGTERM, then SIGKILL if it hangs) and remove the temporary files."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _prepare(self) -> tuple[Path, Path]:
        """Write the actions and rules directories, readable by the user polkitd."""
        self._dir.chmod(0o755)
        actions, rules = self._dir / "actions", self._dir / "rules.d"
        for directory in (actions, rules):
            directory.mkdir(mode=0o755)
        shutil.copyfile(POLICY_FILE, actions / POLICY_FILE.name)
        for name, text in self._rules.items():
            (rules / name).write_text(text)
        for path in (*actions.iterdir(), *rules.iterdir()):
            path.chmod(0o644)
        return actions, rules

    async def _wait_for_name(self, process: asyncio.subprocess.Process) -> None:
        """Wait for polkitd to own its name; fail at once if it exits first."""
        bus = await MessageBus(bus_address=self.bus_address).connect()
        try:
            owned = asyncio.ensure_future(_name_owned(bus, POLKIT_NAME))
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({owned, exited}, return_when=asyncio.FIRST_COMPLETED)
            for task in (owned, exited):
                task.cancel()
            if not owned.done() or owned.cancelled():
                text = self.log.read_text(errors="replace")
                raise RuntimeError(f"polkitd exited ({process.returncode}): {text}")
        finally:
            bus.disconnect()


async def _name_owned(bus: MessageBus, name: str) -> None:
    """Return once ``name`` has an owner: watch NameOwnerChanged first, then ask, so no race."""
    acquired = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        is_ours = message.member == "NameOwnerChanged" and message.body[0] == name
        if is_ours and message.body[2] and not acquired.done():
            acquired.set_result(None)

    bus.add_message_handler(on_message)
    rule = f"type='signal',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{name}'"
    await _bus_call(bus, "AddMatch", "s", [rule])
    if not (await _bus_call(bus, "NameHasOwner", "s", [name]))[0]:
        await acquired
    bus.remove_message_handler(on_message)


async def _bus_call(
    bus: MessageBus, member: str, signature: str, body: list[object]
) -> list[object]:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body,
        )
    )
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")
    return list(reply.body)
