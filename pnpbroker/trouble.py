"""How an ongoing fault is logged: loudly when it starts, then a reminder now and then, and
once when it is over. A full disk retried every second, or a bus retried with backoff for an
hour, is then one ERROR line, a few reminders and one line saying it passed: never silent,
never a flood."""

from __future__ import annotations

import logging
import time

#: Seconds between reminders while a fault lasts.
REMIND_SECONDS = 60.0


class Trouble:
    """One kind of fault, as it comes and goes."""

    def __init__(self, log: logging.Logger, remind: float = REMIND_SECONDS) -> None:
        self.log = log
        self.remind = remind
        self.since: float | None = None
        self.attempts = 0
        self._reminded = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, message: str, *args: object) -> None:
        """Another failure: logged if it is the first, or a reminder is due."""
        now = time.monotonic()
        self.attempts += 1
        if self.since is None:
            self.since = self._reminded = now
            self.log.error(message, *args)
        elif now - self._reminded >= self.remind:
            self._reminded = now
            self.log.error("%s (still, for %.0f s)", message % args, now - self.since)

    def over(self, message: str, *args: object) -> None:
        """It passed: say so (if it had been reported)."""
        if self.since is not None:
            self.log.warning(message, *args)
        self.since = None
        self.attempts = 0
