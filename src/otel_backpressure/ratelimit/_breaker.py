"""The Redis store's circuit breaker: one outage is one failure, one probe finds recovery.

Three states over a clock in seconds:

- **closed**: every call goes to Redis;
- **open**: calls skip Redis (the store fails open or closed) until
  ``probe_interval`` seconds after the breaker opened or last probed;
- **half open**: the first call after that interval is the one probe; every
  other call keeps skipping Redis until the probe answers. A probe that
  succeeds closes the breaker; one that fails waits another interval.

Each call takes a *ticket* (the breaker's epoch, which moves on at every open
and every close) and hands it back with its outcome. A failure whose ticket
is older than the current epoch belongs to an outage the breaker already
knows about (or one that is already over): it changes nothing. So a stall
that times out a hundred requests in flight opens the breaker once, and a
late timeout of a request sent before recovery does not open it again.

The interval does not grow while Redis stays down: one probe per interval per
process costs the server nothing, and a growing wait would keep the limiter
off long after Redis is back (the wait chosen during a long outage would
decide how long enforcement stays off after it). Enforcement resumes at most
one interval plus one probe's round trip after Redis answers again.

Example::

    breaker = Breaker(probe_interval=1.0, clock=time.monotonic)
    ticket = breaker.admit()
    if ticket < 0:
        ...  # skip Redis
    else:
        try:
            reply = await call_redis()
        except Exception:
            breaker.failed(ticket)
        else:
            breaker.succeeded(ticket)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

__all__ = ["SKIP", "Breaker"]

_logger = logging.getLogger(__name__.rpartition(".")[0] + ".redis")

# the ticket admit() hands out when the call must not go to Redis
SKIP: Final = -1


class Breaker:
    """Closed / open / half-open over ``clock`` (seconds); see the module docstring.

    Epochs are even while closed and odd while open, so a ticket says which
    state admitted its call: an odd ticket is the half-open probe's.
    """

    __slots__ = ("_epoch", "_probing", "_retry_at", "clock", "outages", "probe_interval")

    def __init__(self, probe_interval: float, clock: Callable[[], float]) -> None:
        self.probe_interval = probe_interval
        self.clock = clock
        self._epoch = 0
        # when the next probe may go (meaningful while open)
        self._retry_at = 0.0
        self._probing = False
        # how many times the breaker opened: one per outage
        self.outages = 0

    @property
    def is_open(self) -> bool:
        """Whether calls skip Redis (open or half open)."""
        return bool(self._epoch & 1)

    def admit(self) -> int:
        """A ticket for one call to Redis, or ``SKIP`` when the call must not go."""
        epoch = self._epoch
        if not epoch & 1:
            return epoch
        if self._probing or self.clock() < self._retry_at:
            return SKIP
        self._probing = True
        return epoch

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed or due)."""
        if not self._epoch & 1:
            return 0.0
        return max(0.0, self._retry_at - self.clock())

    def succeeded(self, ticket: int) -> None:
        """Redis answered the call holding ``ticket``: a probe's answer closes the breaker."""
        if ticket & 1 and ticket == self._epoch:
            self._epoch += 1
            self._probing = False
            _logger.info("Rate-limit Redis store reachable again; circuit closed")

    def failed(self, ticket: int, error_type: str) -> None:
        """The call holding ``ticket`` failed: open (once per outage) or probe again later."""
        if ticket != self._epoch:
            return  # admitted before the breaker last changed: an outage already counted
        self._retry_at = self.clock() + self.probe_interval
        if ticket & 1:  # the probe: still down
            self._probing = False
            _logger.debug("Rate-limit Redis store still unavailable (%s)", error_type)
            return
        self._epoch += 1
        self.outages += 1
        _logger.warning(
            "Rate-limit Redis store failed (%s); skipping it, one probe every %gs",
            error_type,
            self.probe_interval,
        )

    def abandoned(self, ticket: int) -> None:
        """The call holding ``ticket`` was cancelled: a probe's turn goes to the next call."""
        if ticket & 1 and ticket == self._epoch:
            self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (a probe in flight)."""
        if not self._epoch & 1:
            return "closed"
        return "half-open" if self._probing else "open"

    def __repr__(self) -> str:
        return (
            f"Breaker({self.state}, outages={self.outages}, probe_interval={self.probe_interval}s)"
        )
