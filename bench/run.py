"""Run every benchmark and print one table: ``python bench/run.py [--quick] [--repeat N]`` (root).

Each measurement runs N times (default 3); each figure is reported as its median and its spread
(min-max), beside the peer or limit measured in the same run, with the ratio of the two medians.
A figure whose broker side cannot be measured yet says so instead of a value. The table also goes
to bench/RESULTS.md, with the machine, the versions and the method.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field

from bench import broker, report, tools
from bench.figures import MEASUREMENTS
from bench.measures import Config
from bench.registry import Measurement


@dataclass
class Outcome:
    """Values per figure key over the repetitions, or why a measurement gave none."""

    values: dict[str, list[float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def run_all(cfg: Config, repeat: int, only: set[str] | None) -> Outcome:
    """Every measurement ``repeat`` times, interleaved (round by round) so drift spreads evenly.

    A ``once`` measurement runs in the first round only; ``alongside`` ones run all their
    repetitions in a thread while their host runs (or round by round if the host is left out).
    """
    outcome = Outcome()
    chosen = [m for m in MEASUREMENTS if not only or m.name in only]
    names = {m.name for m in chosen}
    for rnd in range(1, repeat + 1):
        for m in chosen:
            if m.alongside in names or (m.once and rnd > 1):
                continue
            guests = [g for g in chosen if g.alongside == m.name] if rnd == 1 else []
            thread = threading.Thread(target=_guests, args=(cfg, guests, repeat, outcome))
            thread.start()
            _measure(cfg, m, f"[{rnd}/{repeat}]", outcome)
            thread.join()
    return outcome


def _guests(cfg: Config, guests: list[Measurement], repeat: int, outcome: Outcome) -> None:
    for rnd in range(1, repeat + 1):
        for g in guests:
            _measure(cfg, g, f"[{rnd}/{repeat}, alongside]", outcome)


def _measure(cfg: Config, m: Measurement, tag: str, outcome: Outcome) -> None:
    """Run one measurement once; record its values, or why it gave none."""
    if m.name in outcome.missing:
        return
    if m.name in tools.MISSING:
        outcome.missing[m.name] = f"not measured ({tools.MISSING[m.name]})"
        return
    print(f"{tag} {m.name} ...", file=sys.stderr, flush=True)
    try:
        values = m.run(cfg)
    except broker.BrokerPending as exc:
        outcome.missing[m.name] = f"not measured ({exc})"
        return
    except Exception as exc:
        traceback.print_exc()
        outcome.missing[m.name] = f"not measured ({type(exc).__name__}: {exc})"
        return
    for key, value in values.items():
        outcome.values.setdefault(key, []).append(value)


def rows(outcome: Outcome) -> list[list[str]]:
    """Table rows: figure, median, spread, peer/limit (with its median), ratio."""
    out = []
    for m in MEASUREMENTS:
        for fig in m.figures:
            vals = outcome.values.get(fig.key)
            versus = outcome.values.get(fig.versus or "")
            if not vals:
                why = outcome.missing.get(m.name, "not measured")
                out.append([fig.label, why, "", fig.versus or "", ""])
                continue
            med = statistics.median(vals)
            spread = f"{report.num(min(vals))}-{report.num(max(vals))}"
            peer = ratio = ""
            if fig.versus:
                peer = fig.versus
                if versus:
                    peer += f" = {report.num(statistics.median(versus))}"
                    ratio = f"{med / statistics.median(versus):.2f}"
            out.append([fig.label, f"{report.num(med)} {fig.unit}", spread, peer, ratio])
    return out


def config(quick: bool) -> Config:
    udevadm = tools.udevadm()
    if quick:
        return Config(
            burst_links=1000,
            steady_links=500,
            ceiling_links=2000,
            spawn_count=500,
            legacy_links=200,
            idle_seconds=5.0,
            storm_events=2_000,
            device_count=2_000,
            device_calls=5,
            burst_events=2_000,
            udevadm=udevadm,
        )
    return Config(udevadm=udevadm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--only", action="append", help="run only this measurement (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    cfg = config(args.quick)
    tools.pyudev_ready()  # records why in tools.MISSING if it cannot be had
    started = time.monotonic()
    outcome = run_all(cfg, args.repeat, set(args.only) if args.only else None)
    text = report.render(rows(outcome), cfg, args, time.monotonic() - started)
    print(text)
    if not args.no_write:
        (Path(__file__).resolve().parent / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
