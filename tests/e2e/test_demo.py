"""``python -m otel_backpressure.demo`` as a user runs it: exit code, summary, collector."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pyte
import pytest

from e2e.collector import Collector

pytestmark = pytest.mark.e2e


def run_demo(tmp_path: Path, *arguments: str) -> tuple[str, dict[str, Any]]:
    summary_path = tmp_path / "summary.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_backpressure.demo",
            "--duration",
            "8",  # long enough for every phase of the scenario to show
            "--interval",
            "1",
            "--summary-json",
            str(summary_path),
            *arguments,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout, json.loads(summary_path.read_text())


def assert_backpressure_happened(stdout: str, summary: dict[str, Any]) -> None:
    (pool,) = summary["pools"].values()
    assert pool["max"] == 6  # pool_size 4 + max_overflow 2, read from the pool
    assert pool["peak_overflow"] >= 1
    assert pool["timeouts"] >= 1
    rejected = {
        policy: results.get("rejected", 0) for policy, results in summary["rate_limits"].items()
    }
    assert rejected["player"] + rejected["leaderboard"] >= 1, rejected
    handled = {kind: outcomes.get("handled", 0) for kind, outcomes in summary["exceptions"].items()}
    assert handled.get("not_found", 0) + handled.get("validation_error", 0) >= 1, handled
    assert handled.get("pool_exhausted", 0) >= 1, handled
    assert summary["requests"].get("503", 0) >= 1
    assert summary["requests"].get("429", 0) == sum(rejected.values()), (rejected, summary)
    assert summary["client_failures"] == {}
    # the terminal shows the same facts
    assert re.search(r"^\[\s*\d+\.\ds/8s\] requests \d+", stdout, re.MULTILINE), stdout
    assert re.search(r"peak_overflow=[1-9]", stdout), stdout
    assert re.search(r"timeouts=[1-9]", stdout), stdout
    assert re.search(r"rate limit (player|leaderboard): allowed=\d+ .*rejected=[1-9]", stdout)
    assert re.search(r"exceptions (not_found|validation_error): handled=[1-9]", stdout), stdout


def rejections(summary: dict[str, Any]) -> int:
    """Requests some enforced policy rejected, over every rate limiter of the demo."""
    return sum(int(results.get("rejected", 0)) for results in summary["rate_limits"].values())


def test_the_summary_s_429s_are_the_rate_limiters_rejections(tmp_path: Path) -> None:
    """The warm-up before the clock starts is not counted by the limiters, so the figures agree.

    It used to spend player 0's budget: the view opened on "allowed 4,
    rejected 1" at 0.0 s and the summary had one rejection more than 429s.
    """
    stdout, summary = run_demo(tmp_path)
    assert rejections(summary) >= 1, summary  # the storms: not a comparison of zeros
    assert summary["requests"].get("429", 0) == rejections(summary), summary
    # the first progress report, before any player's request: every rate-limit figure zero
    first = stdout.split("[  0.0s/8s] requests 0 ()\n", 1)[1].split("\n[", 1)[0]
    rows = re.findall(r"^  rate limits (\S+): (.*(?:\n      .*)?)", first, re.MULTILINE)
    assert rows, stdout
    for policy, figures in rows:
        counts = re.findall(r"(allowed|rejected|dry run rej\.) (\S+?),", figures)
        assert counts, figures
        assert {value for _, value in counts} <= {"0", "-"}, (policy, figures)


@pytest.mark.parametrize(
    ("argument", "url", "shown", "error"),
    [
        (
            "--database-url",
            "postgresql+asyncpg://postgres:secret@127.0.0.1:1/test",
            "postgresql+asyncpg://postgres:***@127.0.0.1:1/test",
            "ConnectionRefusedError: ",
        ),
        (
            "--redis-url",
            "redis://:secret@127.0.0.1:1/0",
            "redis://:***@127.0.0.1:1/0",
            "ConnectionError: ",
        ),
    ],
    ids=["database", "redis"],
)
def test_an_unreachable_server_is_one_line_not_a_traceback(
    tmp_path: Path, argument: str, url: str, shown: str, error: str
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    # nothing listens on port 1
    result = subprocess.run(
        [sys.executable, "-m", "otel_backpressure.demo", argument, url],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"python -m otel_backpressure.demo: error: {argument}: cannot use {shown}: {error}"
    ), line
    assert "secret" not in result.stdout


def test_demo_on_sqlite_feeds_a_collector(tmp_path: Path, collector: Collector) -> None:
    stdout, summary = run_demo(tmp_path, "--otlp-endpoint", collector.grpc_endpoint)
    assert_backpressure_happened(stdout, summary)
    assert f"exporting to {collector.grpc_endpoint}" in stdout
    received = collector.received()  # the demo flushed on exit
    for name in (
        "backpressure.pool.overflow",
        "db.client.connection.timeouts",
        "backpressure.rate_limit.requests",
        "backpressure.exceptions",
        "http.client.open_connections",  # the profile service, over real HTTP
        "http.client.request.time_in_queue",
    ):
        assert name in received.metrics, sorted(received.metrics)
    assert received.metrics["db.client.connection.timeouts"].total() >= 1
    assert received.resource["service.name"] == "backpressure-demo"
    statuses = {span.attributes.get("error.type"): span.status_code for span in received.spans}
    assert statuses.get("pool_exhausted") == "STATUS_CODE_ERROR"


@pytest.mark.integration
def test_demo_on_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    url = postgres_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    stdout, summary = run_demo(tmp_path, "--database-url", url)
    assert_backpressure_happened(stdout, summary)
    assert "no OTLP endpoint: summary only" in stdout
    assert "password" not in stdout


@pytest.mark.integration
def test_demo_shows_its_redis_and_outbound_http_pools(tmp_path: Path, redis_url: str) -> None:
    stdout, summary = run_demo(tmp_path, "--redis-url", redis_url)
    assert redis_url.split("//", 1)[1] in summary["pools"], sorted(summary["pools"])
    assert re.search(r"^  HTTP pools 127\.0\.0\.1: active \d+, idle \d+", stdout, re.MULTILINE)


PROGRESS = re.compile(r"^\[\s*\d+\.\ds/8s\] requests \d+")


@pytest.mark.parametrize("rows", [24, 16])  # 16: fewer lines than the demo has rows
def test_the_live_view_fits_a_real_80_column_terminal(tmp_path: Path, rows: int) -> None:
    """On a pty of 80 x ``rows`` (rich reads the size itself) every frame fits, the summary stays.

    The demo's output goes through a VT100 emulator (pyte) as a terminal
    shows it: no frame is cropped (rich marks a cropped Live with a "..."
    line), the progress line is never repeated by a frame scrolling the one
    before, every section and the phase show, and after the run the whole
    final summary is on the screen.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env = {k: v for k, v in env.items() if k not in {"COLUMNS", "LINES"}} | {"TERM": "xterm"}
    summary_path = tmp_path / "summary.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "otel_backpressure.demo", "--duration", "8",
         "--summary-json", str(summary_path)],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(slave)
    screen = pyte.Screen(80, rows)
    stream = pyte.ByteStream(screen)
    frames = 0
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the demo exited and closed the pty
                break
            if not chunk:
                break
            stream.feed(chunk)
            lines = [line.rstrip() for line in screen.display]
            assert "..." not in [line.strip() for line in lines], "\n".join(lines)
            progress = [line for line in lines if PROGRESS.match(line)]
            assert len(progress) <= 1, "\n".join(lines)
            if progress and any(line.startswith("phase ") for line in lines):
                frames += 1
                seen |= {line.split()[0] for line in lines if line}
    finally:
        os.close(master)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert frames >= 10
    assert {"pools", "rate", "errors", "phase"} <= seen, seen
    final = "\n".join(line.rstrip() for line in screen.display)
    if rows >= 24:  # the whole summary fits on the screen
        assert "== summary after 8 s, 20 players ==" in final, final
    assert "telemetry: not exported" in final, final
    assert json.loads(summary_path.read_text())["pools"]
