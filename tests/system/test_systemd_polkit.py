"""polkit under a real systemd: the machine's own polkitd (D-Bus activated) judges Pause.

Callers are real users of the machine calling with ``busctl``: ``nobody`` (no session, so the
actions' default ``no`` applies), root, and a user in a group that a rules file (the one in
docs/system.md) grants the actions to.
"""

from __future__ import annotations

import re

from support import REPO_ROOT
from support.container import Machine, wait_for

from system.systemtools import token, unit_property

CALL = ["busctl", "call", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1"]
PAUSED = ["busctl", "get-property", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1"]


def as_user(user: str, group: str, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv]


def paused(booted: Machine) -> bool:
    return booted.run([*PAUSED, "Paused"]).stdout.split() == ["b", "true"]


def documented_rule() -> str:
    text = (REPO_ROOT / "docs" / "system.md").read_text()
    block = re.search(r"```js\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


def test_polkitd_refuses_nobody_allows_root_and_a_granted_group(broker: Machine) -> None:
    refused = broker.run(as_user("nobody", "nogroup", [*CALL, "Pause"]), check=False)
    assert refused.returncode != 0
    assert "org.pnp.Broker1.Error.NotAuthorized" in refused.stderr or "not authorized" in (
        refused.stderr.lower()
    )
    assert not paused(broker)
    assert unit_property(broker, "polkit.service", "ActiveState") == "active"  # it was asked

    broker.run([*CALL, "Pause"])  # root
    assert paused(broker)
    broker.run([*CALL, "Resume"])
    assert not paused(broker)

    user = f"pnpt{token()}"
    broker.run(f"groupadd -f pnpadmin && useradd --no-create-home -G pnpadmin {user}")
    before = broker.run(as_user(user, user, [*CALL, "Pause"]), check=False)
    assert before.returncode != 0  # not yet: no rule grants it
    broker.run(
        "mkdir -p /etc/polkit-1/rules.d && cat > /etc/polkit-1/rules.d/50-pnpbroker.rules",
        input=documented_rule(),
    )

    def granted() -> bool:  # polkitd reads new rules files by itself, soon after they appear
        return broker.run(as_user(user, user, [*CALL, "Pause"]), check=False).returncode == 0

    wait_for("polkitd to load the rule", granted, timeout=60)
    assert paused(broker)
    broker.run(as_user(user, user, [*CALL, "Resume"]))
    assert not paused(broker)
    broker.run(["userdel", user])
