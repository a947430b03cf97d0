"""The README's plot: each of issue 13's targets, the ratio measured beside what it must reach.

``python -m bench.plot`` (or ``bench/run.py`` after each run that writes) reads
``bench/results.json`` (every figure's values, the latest run of each measurement) and draws
``docs/ratios.png``: one bar per target, its length the measured ratio over the target (so 1.0,
the line, is "met exactly"; further right is better, for "at least" and "at most" targets
alike), labelled with the ratio and the target. A target with no figure yet is listed as
"not measured". matplotlib is installed with pip into ``bench/.cache/pylib`` (as pyudev is),
never into the project's venv; without it the plot is skipped and the reason printed.
"""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import CACHE, REPO

RESULTS = REPO / "bench" / "results.json"
PNG = REPO / "docs" / "ratios.png"


@dataclass(frozen=True)
class Target:
    """``value`` / ``versus`` (or ``value`` alone, without ``versus``) must be >= or <= ``goal``."""

    label: str
    value: str
    versus: str | None
    goal: float
    at_least: bool

    def ratio(self, values: dict[str, list[float]]) -> float | None:
        if not values.get(self.value) or (self.versus and not values.get(self.versus)):
            return None
        ratio = statistics.median(values[self.value])
        return ratio / statistics.median(values[self.versus]) if self.versus else ratio

    def score(self, ratio: float) -> float:
        """How far along: 1.0 = the target exactly, more = better."""
        if self.at_least:
            return ratio / self.goal
        return self.goal / ratio if ratio > 0 else 2.0


TARGETS = (
    Target("1. drain / D-Bus ceiling >= 0.8", "broker.drain", "ceiling.rate", 0.8, True),
    Target("2. legacy /bin/true / spawn loop >= 0.9", "broker.legacy", "spawn.python", 0.9, True),
    Target(
        "3. steady p99 / listener's p99 <= 1.2",
        "broker.steady.p99",
        "netlink.steady.p99",
        1.2,
        False,
    ),
    Target(
        "4. trigger --settle / shell floor >= 0.5", "broker.coldplug", "coldplug.shell", 0.5, True
    ),
    Target("5. storm drain / floor <= 1.05", "broker.storm.drain", "storm.floor", 1.05, False),
    Target("5. storm peak RSS <= 48 MB", "broker.storm.rss", None, 48.0, False),
    Target("5. idle RSS <= 30 MB", "broker.idle.rss", None, 30.0, False),
)


def save(values: dict[str, list[float]], accumulate: bool = False) -> dict[str, list[float]]:
    """Merge this run's values into results.json and return the whole: a figure measured now
    replaces its old values (or, with ``accumulate``, is added to them: the storm runs once per
    invocation, so three invocations make its median of three); the others are kept."""
    old: dict[str, list[float]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged = dict(old)
    for key, vals in values.items():
        merged[key] = [*old.get(key, []), *vals] if accumulate else vals
    RESULTS.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return merged


def _matplotlib() -> bool:
    pylib = str(CACHE / "pylib")
    if pylib not in sys.path:
        sys.path.insert(0, pylib)
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        got = subprocess.run([*pip, "--target", pylib, "matplotlib"], capture_output=True)
        if got.returncode != 0:
            print(f"no plot: pip install matplotlib failed: {got.stderr[-200:]!r}")
            return False
    return True


def draw(values: dict[str, list[float]], path: Path = PNG) -> None:
    """Write the PNG (or say why not)."""
    if not _matplotlib():
        return
    importlib.import_module("matplotlib").use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(TARGETS) + 1.2))
    labels = []
    for row, target in enumerate(reversed(TARGETS)):
        ratio = target.ratio(values)
        labels.append(target.label)
        if ratio is None:
            ax.text(0.02, row, "not measured", va="center")
            continue
        score = target.score(ratio)
        ax.barh(row, min(score, 2.0), color="tab:green" if score >= 1 else "tab:red")
        unit = "" if target.versus else " MB"
        ax.text(min(score, 2.0) + 0.02, row, f"{ratio:.2f}{unit}", va="center")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(TARGETS)), labels)
    ax.set_xlim(0, 2.2)
    ax.set_xlabel("measured / target (1 = target met exactly; right is better)")
    ax.set_title("pnpbroker against issue 13's targets (bench/RESULTS.md)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    draw(json.loads(RESULTS.read_text()))


if __name__ == "__main__":
    main()
