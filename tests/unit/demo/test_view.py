"""The demo's live view: rows from real SDK readings, 80 columns, rich or plain."""

from __future__ import annotations

import io
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from rich.console import Console

from otel_backpressure.demo.summary import Snapshot, read_snapshot
from otel_backpressure.demo.view import (
    SECTIONS,
    WIDTH,
    Header,
    LiveView,
    Row,
    Section,
    _rich_view,
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
    assert rows["rate limits"] == [Row("player", ("50", "7", "3"))]
    assert rows["errors"] == [Row("RuntimeError", ("0", "2")), Row("not_found", ("4", "0"))]
    assert rows["event loop"] == rows["thread pools"] == rows["HTTP pools"] == []


def test_plain_lines_fit_80_columns_and_name_every_cell(metrics: MetricsCapture) -> None:
    lines = plain_lines(HEADER, record_everything(metrics), SECTIONS)
    assert all(len(line) <= WIDTH for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("[ 12.2s/120s] requests 10106 (200:10000 429:7 503:99)")
    assert "  rate limits player: allowed 50, rejected 7, dry run rej. 3" in lines
    assert "  errors RuntimeError: handled 0, unhandled 2" in lines


def test_rich_view_fits_80_columns(metrics: MetricsCapture) -> None:
    console = Console(file=io.StringIO(), width=WIDTH, record=True, color_system=None)
    console.print(_rich_view(HEADER, record_everything(metrics), SECTIONS))
    text = console.export_text()
    assert all(len(line) <= WIDTH for line in text.splitlines())
    assert "1,234,567" in text  # the numbers survive; a long pool name is cut instead
    assert "5/6 █████·" in text
    assert "phase rush:" in text


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
    assert printed[0].startswith("-- phase rush: the pool saturates")
    assert printed[1:] == plain_lines(HEADER, snapshot, SECTIONS)
    assert all(len(line) <= WIDTH for line in printed)


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
