"""The demo's timeline: which trouble happens when, spread over the whole run.

A run is cut into phases by fraction of ``--duration``, so a 20 s run and a
10 minute run tell the same story: calm play, a leaderboard rush that
saturates the pool and times checkouts out, refresh storms the rate limiter
rejects (and a stricter dry-run policy would), a matchmaker release that
raises unhandled errors, a sync export and a blocking route that fill the
threads and stall the loop, an outage of the rate limiter's Redis, then
recovery. Each trouble starts and stops, so the live view keeps moving and
every alert of ``collector-config/`` has a phase that fires it and a calm
that resolves it.

The outage is the one trouble the demo cannot make by itself: it never stops
a server it did not start. With ``--limiter-redis-url`` the limiter keeps its
counters in that Redis, and whoever owns the server stops it when the phase
begins and starts it again at the recovery (tests/e2e/test_prometheus.py does,
with a private ``redis-server``); the players only keep the limiter busy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PHASES", "Phase", "phase_at"]


@dataclass(frozen=True)
class Phase:
    """How the players behave from ``start`` (a fraction of the run) on.

    ``leaderboard``: share of a player's requests that read the slow
    leaderboard; ``hold``: seconds a leaderboard read keeps its connection;
    ``storm``: chance per round that a player fires a burst of refreshes (more
    than its rate-limit burst); ``bug``: chance that a match request hits the
    matchmaker bug; ``pause``: seconds a player waits between rounds (low, high);
    ``upstream``: seconds the profile service takes to answer (its HTTP pool of
    two connections queues past 2 lookups a second at 1 s);
    ``export``: share of requests that run the sync report export on a thread
    of anyio's limiter; ``stats``: share that run the stats route, which blocks
    the event loop.
    """

    name: str
    start: float
    summary: str
    leaderboard: float
    hold: float
    storm: float
    bug: float
    pause: tuple[float, float]
    upstream: float = 0.02
    export: float = 0.0
    stats: float = 0.0


def _calm(name: str, start: float, summary: str) -> Phase:
    return Phase(name, start, summary, leaderboard=0.05, hold=0.05, storm=0.0, bug=0.0,
                 pause=(0.5, 0.9))  # fmt: skip


PHASES: tuple[Phase, ...] = (
    _calm("calm", 0.0, "normal play"),
    Phase(
        "rush",
        0.09,
        "everyone opens the slow leaderboard: the pool saturates, checkouts wait and time out",
        leaderboard=0.8,
        hold=0.8,
        storm=0.0,
        bug=0.0,
        pause=(0.9, 1.3),  # under the leaderboard policy's 1/s: the pool, not the limiter
    ),
    Phase(
        "storm",
        0.34,
        "refresh storms (the limiter rejects, a stricter dry run would) and a slow profile service",
        leaderboard=0.05,
        hold=0.05,
        storm=0.6,
        bug=0.0,
        pause=(0.1, 0.3),
        upstream=1.0,  # and the profile service slows: its HTTP pool saturates, queues, gives up
    ),
    Phase(
        "bug",
        0.49,
        "a matchmaker release fails: unhandled RuntimeError on /matches",
        leaderboard=0.05,
        hold=0.05,
        storm=0.0,
        bug=1.0,
        pause=(0.3, 0.6),
        upstream=1.0,  # still slow: the HTTP pool stays saturated through the release
    ),
    Phase(
        "threads",
        0.59,
        "a sync report export fills the thread limiter; a stats route blocks the event loop",
        leaderboard=0.05,
        hold=0.05,
        storm=0.0,
        bug=0.0,
        pause=(0.2, 0.4),
        export=0.5,
        stats=0.3,  # stalls enough for the loop p99 over 100 ms; more starves the whole app
    ),
    Phase(
        "outage",
        0.72,
        "busier play; with --limiter-redis-url, that Redis is down: fails open, store errors",
        leaderboard=0.05,
        hold=0.05,
        storm=0.0,
        bug=0.0,
        pause=(0.4, 0.7),  # busier than calm, under every limit (player-proposed: 2.5/s)
    ),
    _calm("recovery", 0.82, "back to normal play: alerts resolve"),
)


def phase_at(fraction: float) -> Phase:
    """The phase in force ``fraction`` (0..1) of the way through the run."""
    current = PHASES[0]
    for phase in PHASES:
        if fraction >= phase.start:
            current = phase
    return current
