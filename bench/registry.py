"""What a figure and a measurement are (bench.figures lists them; bench.curves adds its own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.measures import Config, Values


@dataclass(frozen=True)
class Figure:
    """One row: a value named ``key``, set against the figure ``versus`` (a peer or a limit)."""

    key: str
    label: str
    unit: str
    versus: str | None = None


@dataclass(frozen=True)
class Measurement:
    """One thing to run per repetition, and the figures it yields."""

    name: str
    run: Callable[[Config], Values]
    figures: tuple[Figure, ...]
    once: bool = False
    alongside: str | None = None
