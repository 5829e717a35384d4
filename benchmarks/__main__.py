"""``python -m benchmarks [name ...]``: run every benchmark module (or the named ones)."""

from __future__ import annotations

import importlib
import sys

# module name in benchmarks/ -> what it measures
SUITES: dict[str, str] = {
    # BEGIN suites
    "ratelimit_asgi": "ASGI overhead per request: RateLimitMiddleware vs slowapi's middleware",
    "ratelimit": "Rate-limit decisions: in memory per decision, and on Redis per second, vs limits",
    "errors": "error mapping: spans without an exception (nil) and the exception path",
    "pool": "Pool checkout/checkin and checkout + SELECT 1: bare vs this package vs contrib",
    "redis_store": "Rate limiting on Redis: 1 and 32 at once, server CPU, vs every limits strategy",
    "redis_outage": "Rate limiting off after a Redis stall or restart ends (private redis-server)",
    "pool_kinds": "psycopg_pool, redis-py, httpx, aiohttp: bare vs this package vs contrib",
    "runtime": "Event loop and thread pools: a busy loop and to_thread.run_sync, bare vs measured",
    "startup": "Start-up under opentelemetry-instrument: enabled vs disabled, ms added",
    # END suites
}


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(SUITES)}")
        return 2
    for name in names:
        print(f"== {name}: {SUITES[name]}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
