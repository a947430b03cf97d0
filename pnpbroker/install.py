"""Put the data files (bus policy, activation file, polkit actions, systemd units, the
sysusers.d file of the forwarder's user) where the system's dbus-daemon, polkitd and systemd
look for them; and the man pages and the bash completion, made from the command line's parser
(:mod:`pnpbroker.manpage`, :mod:`pnpbroker.completion`), where man and bash look for them.
On a live system (no ``destdir``), :func:`create_users` then runs ``systemd-sysusers`` on the
sysusers.d file, as a package's postinst does, so the users exist at once.

The files are plain files in the source tree (``dbus/``, ``polkit/``, ``systemd/``). An installed
package (``pip install``, the wheel, the Debian package's virtualenv) carries copies of them as
``pnpbroker/data/``; a checkout or an editable install uses the tree's own. Only the path of the
``pnpbroker`` program is rewritten: by default the one installed with the running Python (so the
units start what ``pip`` installed, e.g. /opt/pnpbroker/bin/pnpbroker), else
``prefix/bin/pnpbroker``; a package states its own with ``--program``.

Note that dbus-daemon and polkitd only read /usr/share (and /etc), not /usr/local/share: a prefix
other than /usr is for staging (with ``destdir``) rather than for a live system.

Standalone: ``python -m pnpbroker.install [--prefix /usr] [--destdir DIR] [--program PATH]``.
"""

import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pnpbroker.errors import BrokerError

SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = Path(__file__).resolve().parent / "data"
DEFAULT_PREFIX = Path("/usr")
# The program path written in the files in the source tree.
PROGRAM_IN_SOURCES = "/usr/bin/pnpbroker"


class DataFilesMissing(FileNotFoundError, BrokerError):
    """The data files are neither in the package nor in a checkout around it."""


class UsersNotCreated(OSError, BrokerError):
    """systemd-sysusers failed on the sysusers.d file."""


@dataclass(frozen=True)
class Rule:
    """Files matching ``pattern`` in the source tree go to ``directory`` under the prefix (as
    ``name``, if given: debhelper's ``PACKAGE.sysusers`` becomes ``PACKAGE.conf`` so too)."""

    pattern: str
    directory: str
    name: str = ""


RULES = (
    Rule("dbus/org.pnp.Broker.conf", "share/dbus-1/system.d"),
    Rule("dbus/org.pnp.Broker.service", "share/dbus-1/system-services"),
    Rule("dbus/*.xml", "share/dbus-1/interfaces"),
    Rule("polkit/*.policy", "share/polkit-1/actions"),
    Rule("systemd/*.service", "lib/systemd/system"),
    Rule("systemd/*.socket", "lib/systemd/system"),
    Rule("systemd/pnpbroker.sysusers", "lib/sysusers.d", "pnpbroker.conf"),
)
MAN_DIR = "share/man/man8"
COMPLETION_DIR = "share/bash-completion/completions"
REQUIRED = (
    "dbus/org.pnp.Broker.conf",
    "dbus/org.pnp.Broker.service",
    "polkit/org.pnp.Broker.policy",
)


def default_source() -> Path:
    """Where the data files are: the installed package's copies, else the checkout."""
    if all((PACKAGE_DATA / name).is_file() for name in REQUIRED):
        return PACKAGE_DATA
    return SOURCE_ROOT


def default_program(prefix: Path) -> Path:
    """The pnpbroker executable the units start, unless ``--program`` says otherwise: the one
    installed with this Python (a virtualenv's bin/, /usr/local/bin after ``pip install`` as
    root), else ``prefix/bin/pnpbroker``."""
    installed = Path(sysconfig.get_path("scripts")) / "pnpbroker"
    return installed if installed.is_file() else prefix / "bin" / "pnpbroker"


def install(
    prefix: Path = DEFAULT_PREFIX,
    destdir: Path | None = None,
    *,
    program: Path | None = None,
    source: Path | None = None,
) -> list[Path]:
    """Copy every data file to ``destdir/prefix/...`` and return the paths written, in order.

    ``program`` is the pnpbroker executable the activation file and units start
    (default: see ``default_program``). Raises ValueError for a relative path,
    DataFilesMissing when ``source`` lacks the files, OSError when writing fails.
    """
    program = program or default_program(prefix)
    source = source or default_source()
    if not prefix.is_absolute() or not program.is_absolute():
        raise ValueError(f"prefix and program must be absolute paths: {prefix}, {program}")
    _check_sources(source)
    root = (destdir or Path("/")) / prefix.relative_to("/")
    written = []
    for rule in RULES:
        for path in sorted(source.glob(rule.pattern)):
            target = root / rule.directory / (rule.name or path.name)
            written.append(_copy(path, target, str(program)))
    return written + _generated(root)


def create_users(paths: Iterable[Path]) -> list[Path]:
    """Run ``systemd-sysusers`` on the sysusers.d files among ``paths`` (as installed on a
    live system): the users and groups exist now, not only after the next boot's
    systemd-sysusers.service. Returns those files. FileNotFoundError without
    systemd-sysusers (a system without systemd), UsersNotCreated when it fails."""
    files = [path for path in paths if path.parent.name == "sysusers.d"]
    if files:
        done = subprocess.run(
            ["systemd-sysusers", *map(str, files)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise UsersNotCreated(f"systemd-sysusers failed: {done.stderr.strip()}")
    return files


def _generated(root: Path) -> list[Path]:
    """The man pages and the bash completion, from the parser this program runs."""
    from pnpbroker import completion, manpage

    files = {f"{MAN_DIR}/{name}": text for name, text in manpage.pages().items()}
    files[f"{COMPLETION_DIR}/pnpbroker"] = completion.script()
    written = []
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o644)
        written.append(target)
    return written


def _check_sources(source: Path) -> None:
    missing = [name for name in REQUIRED if not (source / name).is_file()]
    if missing:
        raise DataFilesMissing(f"data files missing under {source}: {', '.join(missing)}")


def _copy(path: Path, target: Path, program: str) -> Path:
    """Write one file (world-readable, as the daemons need) with the program path filled in."""
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    target.write_text(path.read_text().replace(PROGRAM_IN_SOURCES, program))
    target.chmod(0o644)
    return target


if __name__ == "__main__":  # python -m pnpbroker.install: the same as ``pnpbroker install``
    from pnpbroker.commands import main

    sys.exit(main(["install", *sys.argv[1:]]))
