"""The demo's live view: rows from real SDK readings, 80x24, rich or plain."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from rich.console import Console
from rich.live_render import LiveRender

from otel_backpressure.demo.summary import Snapshot, read_snapshot
from otel_backpressure.demo.view import (
    RECENT,
    SECTIONS,
    WIDTH,
    Frame,
    Header,
    LiveView,
    Row,
    Section,
    frame_lines,
    plain_lines,
)
from otel_backpressure.testing import MetricsCapture

LONG_POOL = "a-very-long-database-host.example.internal:5432/game_of_the_year"
POOL = {"db.client.connection.pool.name": LONG_POOL}


def record_everything(metrics: MetricsCapture) -> Snapshot:
    def observe(value: float, **extra: str) -> object:
        def callback(options: CallbackOptions) -> list[Observation]:
            return [Observation(value, {**POOL, **extra})]

        return callback

    meter = metrics.meter_provider.get_meter("test")
    meter.create_observable_up_down_counter(
        "db.client.connection.count", [observe(5, **{"db.client.connection.state": "used"})]
    )
    meter.create_observable_up_down_counter("db.client.connection.max", [observe(6)])
    meter.create_observable_up_down_counter("db.client.connection.pending_requests", [observe(12)])
    meter.create_counter("db.client.connection.timeouts").add(1234567, POOL)
    requests = meter.create_counter("backpressure.rate_limit.requests")
    for result, n in (("allowed", 50), ("rejected", 7), ("dry_run_rejected", 3)):
        requests.add(
            n,
            {"backpressure.rate_limit.policy": "player", "backpressure.rate_limit.result": result},
        )
    exceptions = meter.create_counter("backpressure.exceptions")
    exceptions.add(4, {"error.type": "not_found", "backpressure.exception.outcome": "handled"})
    exceptions.add(2, {"error.type": "RuntimeError", "backpressure.exception.outcome": "unhandled"})
    return read_snapshot(metrics.reader)


HEADER = Header(12.25, 120, "rush", "the pool saturates " * 8, {200: 10_000, 503: 99, 429: 7})


def test_sections_turn_readings_into_rows(metrics: MetricsCapture) -> None:
    snapshot = record_everything(metrics)
    rows = {section.title: section.rows(snapshot) for section in SECTIONS}
    assert rows["pools"] == [Row(LONG_POOL, ("5/6 █████·", "12", "1,234,567"))]
    assert rows["rate limits"] == [Row("player", ("50", "7", "3", "-"))]
    assert rows["errors"] == [Row("RuntimeError", ("0", "2")), Row("not_found", ("4", "0"))]
    assert rows["event loop"] == rows["thread pools"] == rows["HTTP pools"] == []


def test_plain_lines_fit_80_columns_and_name_every_cell(metrics: MetricsCapture) -> None:
    lines = plain_lines(HEADER, record_everything(metrics), SECTIONS)
    assert all(len(line) <= WIDTH for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("[ 12.2s/120s] requests 10106 (200:10000 429:7 503:99)")
    assert "  rate limits player: allowed 50, rejected 7, dry run rej. 3, store errors -" in lines
    assert "  errors RuntimeError: handled 0, unhandled 2" in lines


def render(frame: Frame, width: int = WIDTH, height: int = 24) -> list[str]:
    """The frame as rich's Live draws it on a width x height terminal, as text lines."""
    console = Console(
        file=io.StringIO(), width=width, height=height, record=True, color_system=None
    )
    console.print(LiveRender(frame, vertical_overflow="ellipsis"))
    return console.export_text().rstrip("\n").split("\n")


def test_rich_frame_fits_80_columns(metrics: MetricsCapture) -> None:
    snapshot = record_everything(metrics)
    text = render(LiveView(io.StringIO()).frame(HEADER, snapshot))
    assert all(len(line) <= WIDTH for line in text)
    assert "1,234,567" in "\n".join(text)  # the numbers survive; a long pool name is cut
    assert "5/6 █████·" in "\n".join(text)
    assert text[1].startswith("phase rush:")


def busy_blocks() -> list[tuple[Section, list[Row]]]:
    """More rows than an 80x24 terminal has lines: every section, several rows each."""
    counts = {
        "pools": 4,
        "HTTP pools": 3,
        "rate limits": 5,
        "errors": 8,
        "event loop": 2,
        "thread pools": 3,
    }
    blocks = []
    for section in SECTIONS:
        rows = [
            Row(f"{section.title}-{n}", tuple(f"{n * 11}" for _ in section.columns))
            for n in range(counts[section.title])
        ]
        blocks.append((section, rows))
    return blocks


def test_an_80x24_terminal_shows_the_header_and_every_section_and_nothing_is_cropped() -> None:
    blocks = busy_blocks()
    total = sum(len(rows) for _, rows in blocks)
    assert total + len(blocks) + 2 > 24  # more than fits, on purpose
    text = render(Frame(HEADER, blocks))
    assert len(text) <= 24
    assert "..." not in [line.strip() for line in text]  # rich's mark of a cropped Live
    assert all(len(line) <= WIDTH for line in text)
    assert text[0].startswith("[ 12.2s/120s] requests 10106")
    assert text[1].startswith("phase rush:")
    shown = hidden = 0
    for section, rows in blocks:
        (heading,) = [line for line in text if line.startswith(section.title + " ")]
        idle = heading.split("+", 1)[1].split()[0] if "+" in heading else "0"
        hidden += int(idle)
        shown += sum(line.startswith(row.name + " ") for row in rows for line in text)
    assert shown + hidden == total  # every row is on screen or counted as idle
    assert shown == 24 - 2 - len(blocks)  # and the screen is used to its last line


def test_rows_that_moved_lately_are_the_ones_shown() -> None:
    blocks = busy_blocks()
    errors = dict(blocks)[SECTIONS[3]]
    moved = {("errors", errors[5].name): HEADER.elapsed - 1.0}  # one error moved just now
    # the other rows moved long ago, the pools' last
    for section, rows in blocks:
        for row in rows:
            moved.setdefault((section.title, row.name), HEADER.elapsed - RECENT - 5)
    moved[("pools", "pools-0")] = HEADER.elapsed - RECENT - 1
    lines = ["".join(t for t, _ in line) for line in frame_lines(HEADER, blocks, WIDTH, 10, moved)]
    assert len(lines) == 10
    names = [line.split()[0] for line in lines[2:]]
    # 6 headings and room for 2 rows: the one moving, then the most recently moved
    assert names == [
        "pools", "pools-0", "HTTP", "rate", "errors", errors[5].name, "event", "thread"
    ]  # fmt: skip
    assert "pools +3 idle" in lines[2]
    assert "errors +7 idle" in lines[6]


@pytest.mark.parametrize(
    ("height", "expected"),
    [
        (1, ["[ 12.2s"]),
        (2, ["[ 12.2s", "phase rush"]),
        (5, ["[ 12.2s", "phase rush", "pools +4", "HTTP pools +3", "rate limits +5"]),
    ],
)
def test_a_tiny_terminal_keeps_the_progress_line_first(height: int, expected: list[str]) -> None:
    lines = frame_lines(HEADER, busy_blocks(), WIDTH, height)
    texts = ["".join(t for t, _ in line) for line in lines]
    assert len(texts) == len(expected)
    assert all(text.startswith(start) for text, start in zip(texts, expected, strict=True))


def test_the_view_notes_when_each_row_last_changed(metrics: MetricsCapture) -> None:
    view = LiveView(io.StringIO())
    snapshot = record_everything(metrics)
    view.frame(HEADER, snapshot)
    later = Header(20.0, 120, "rush", "", {})
    frame = view.frame(later, snapshot)  # same readings: nothing moved
    assert frame.moved[("pools", LONG_POOL)] == HEADER.elapsed
    changed = Snapshot({"db.client.connection.timeouts": [(POOL, 7.0)]})
    frame = view.frame(later, changed)
    assert frame.moved[("pools", LONG_POOL)] == 20.0


def test_a_long_plain_row_goes_on_between_two_cells() -> None:
    section = Section("rate limits", SECTIONS[2].columns, lambda snapshot: [
        Row("player-proposed", ("12,345", "6,789", "1,011", "-"))
    ])  # fmt: skip
    lines = plain_lines(HEADER, Snapshot({}), [section])[1:]
    assert lines == [
        "  rate limits player-proposed: allowed 12,345, rejected 6,789,",
        "      dry run rej. 1,011, store errors -",
    ]


def test_a_part_adds_its_rows_with_one_section(metrics: MetricsCapture) -> None:
    def loop_rows(snapshot: Snapshot) -> list[Row]:
        return [Row("main", ("1.5 ms",))]

    sections = [*SECTIONS, Section("event loop", ("lag",), loop_rows)]
    lines = plain_lines(HEADER, record_everything(metrics), sections)
    assert lines[-1] == "  event loop main: lag 1.5 ms"


def test_not_a_terminal_prints_plain_lines_on_ticks_and_phase_changes(
    metrics: MetricsCapture,
) -> None:
    out = io.StringIO()
    view = LiveView(out)
    assert not view.interactive
    snapshot = record_everything(metrics)
    view.update(HEADER, snapshot, tick=False)  # a new phase: one line
    view.update(HEADER, snapshot, tick=False)  # nothing new
    view.update(HEADER, snapshot, tick=True)  # the rows
    view.stop()
    printed = out.getvalue().splitlines()
    rows = plain_lines(HEADER, snapshot, SECTIONS)
    phase, after = printed[: -len(rows)], printed[-len(rows) :]
    assert after == rows
    # the whole phase line, over as many lines as it needs: a log keeps it all
    assert " ".join(line.strip() for line in phase) == (
        f"-- phase {HEADER.phase}: {HEADER.phase_summary}".rstrip()
    )
    assert all(len(line) <= WIDTH for line in printed)


def test_a_plain_progress_line_keeps_every_status_code(metrics: MetricsCapture) -> None:
    statuses = {code: 1000 + code for code in (200, 201, 202, 404, 409, 422, 429, 500, 503)}
    header = dataclasses.replace(HEADER, statuses=statuses)
    lines = plain_lines(header, record_everything(metrics), SECTIONS)
    progress = " ".join(line.strip() for line in lines[:2])
    assert all(f"{code}:{n}" in progress for code, n in statuses.items())
    assert all(len(line) <= WIDTH for line in lines)


def test_event_loop_thread_pool_and_http_rows(metrics: MetricsCapture) -> None:
    meter = metrics.meter_provider.get_meter("test")
    loop = {"backpressure.event_loop.name": "MainThread"}
    threads = {"backpressure.thread_pool.name": "asyncio-default"}
    server = {"server.address": "api.example.com", "server.port": 443, "url.scheme": "https"}

    def gauge(name: str, *readings: tuple[float, dict[str, Any]]) -> None:
        observations = [Observation(value, attributes) for value, attributes in readings]
        meter.create_observable_gauge(name, [lambda options: observations])

    gauge("backpressure.event_loop.utilization", (0.5, loop))
    delay = meter.create_histogram(
        "backpressure.event_loop.delay", explicit_bucket_boundaries_advisory=[0.001, 0.01, 0.1]
    )
    for seconds in (0.0005,) * 98 + (0.05, 0.05):
        delay.record(seconds, loop)
    gauge("backpressure.thread_pool.used", (3, threads))
    gauge("backpressure.thread_pool.max", (12, threads))
    gauge("backpressure.thread_pool.queue.length", (0, threads))
    gauge(
        "http.client.open_connections",
        (2, {**server, "http.connection.state": "active"}),
        (8, {**server, "http.connection.state": "idle"}),
    )
    snapshot = read_snapshot(metrics.reader)
    rows = {section.title: section.rows(snapshot) for section in SECTIONS}
    assert rows["event loop"] == [Row("MainThread", ("50% ███···", "0.1s"))]
    assert rows["thread pools"] == [Row("asyncio-default", ("3/12 ██····", "0", "-"))]
    assert rows["HTTP pools"] == [Row("api.example.com", ("2", "8", "0"))]
    assert rows["pools"] == rows["rate limits"] == rows["errors"] == []
