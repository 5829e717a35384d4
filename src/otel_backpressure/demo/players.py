"""Simulated players: concurrent tasks sending the game's requests through httpx in process."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from otel_backpressure.demo.app import MAX_SCORE, PLAYER_ID_HEADER
from otel_backpressure.demo.outbound import PROFILE_SHARE
from otel_backpressure.demo.scenario import Phase

__all__ = ["Traffic", "play"]

STORM = 6  # refreshes a player fires at once now and then


class Traffic:
    """Responses by status code, and failures that reached the client (none expected)."""

    __slots__ = ("failures", "statuses")

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def __repr__(self) -> str:
        return f"Traffic(total={self.total}, statuses={dict(self.statuses)})"


async def play(
    client: httpx.AsyncClient,
    player: int,
    players: int,
    deadline: float,
    traffic: Traffic,
    rng: random.Random,
    phase: Callable[[], Phase],
) -> None:
    """One player until ``deadline`` (loop time), behaving as ``phase()`` says now."""
    loop = asyncio.get_running_loop()
    headers = {PLAYER_ID_HEADER: str(player)}
    while loop.time() < deadline:
        now = phase()
        requests = [_one_request(client, player, players, headers, rng, now)]
        if rng.random() < now.storm:
            # more refreshes at once than the player policy's burst: some get 429
            requests += [client.get(f"/players/{player}", headers=headers) for _ in range(STORM)]
        pause = rng.uniform(*now.pause)
        for outcome in await asyncio.gather(*requests, return_exceptions=True):
            if isinstance(outcome, httpx.Response):
                traffic.statuses[outcome.status_code] += 1
                if outcome.status_code == 429:  # a polite client waits as told
                    pause = max(pause, _retry_after(outcome))
            else:  # the demo keeps playing; the summary shows it
                traffic.failures[type(outcome).__name__] += 1
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(1.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def _one_request(
    client: httpx.AsyncClient,
    player: int,
    players: int,
    headers: dict[str, str],
    rng: random.Random,
    phase: Phase,
) -> httpx.Response:
    if rng.random() < phase.leaderboard:
        return await client.get("/leaderboard", headers=headers)
    if rng.random() < phase.export:
        return await client.get("/export", headers=headers)
    if rng.random() < phase.stats:
        return await client.get("/stats", headers=headers)
    roll = rng.random()
    if roll < 0.45:
        # one lookup in ten asks for a player who does not exist: 404
        target = rng.randint(1, players) if rng.random() > 0.1 else players + 10_000
        if rng.random() < PROFILE_SHARE:  # the profile, from a service over HTTP
            return await client.get(f"/players/{target}/profile", headers=headers)
        return await client.get(f"/players/{target}", headers=headers)
    if roll < 0.85:
        # one score in ten is out of range: 422
        points: Any = rng.randint(0, MAX_SCORE) if rng.random() > 0.1 else MAX_SCORE * 10
        return await client.post(
            f"/players/{player}/score", json={"points": points}, headers=headers
        )
    if roll < 0.90:
        # half the sign-ups pick a taken name: 409
        name = f"player-{rng.randint(1, players)}" if rng.random() < 0.5 else f"new-{rng.random()}"
        return await client.post("/players", json={"name": name}, headers=headers)
    return await client.post("/matches", headers=headers)
