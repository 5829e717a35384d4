"""The demo's live view: rows read from each metrics snapshot, drawn in 80 columns.

In a terminal the view is a ``rich`` table redrawn in place; when stdout is
not a terminal (a pipe, a CI log) it prints the same rows as plain lines
every interval, each at most 80 characters.

Every row comes from one small structure, so a part that adds metrics adds
its rows in a few lines. A :class:`Section` is a title, its column headings
and a function from a :class:`~otel_backpressure.demo.summary.Snapshot` (one
collection of the in-process reader: ``snapshot.by(name, key)`` sums a
metric per attribute value) to :class:`Row` s; a row is a name and one text
cell per column. A section with no rows is left out. For example, an event
loop row::

    def loop_rows(snapshot: Snapshot) -> list[Row]:
        lag = snapshot.by("python.asyncio.loop.lag", "python.asyncio.loop.name")
        return [Row(name, (f"{seconds * 1000:.1f} ms",)) for name, seconds in lag.items()]

    SECTIONS.append(Section("event loop", ("lag",), loop_rows))
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from otel_backpressure.demo.summary import (
    ERROR_TYPE,
    OUTCOME,
    POLICY,
    POOL_NAME,
    RESULT,
    Snapshot,
    quantile,
)

LOOP_NAME = "backpressure.event_loop.name"
THREAD_POOL_NAME = "backpressure.thread_pool.name"

__all__ = ["SECTIONS", "WIDTH", "Header", "LiveView", "Row", "Section", "plain_lines"]

#: Columns the view fits in, rich and plain alike.
WIDTH = 80
_NAME_WIDTH = 24


@dataclass(frozen=True)
class Row:
    """One line of a section: a name (a pool, a policy, an error type) and its cells."""

    name: str
    cells: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    """A titled group of rows with the same columns, read from each snapshot."""

    title: str
    columns: tuple[str, ...]
    rows: Callable[[Snapshot], list[Row]]


@dataclass(frozen=True)
class Header:
    """What the view shows above the sections: progress, phase, requests so far."""

    elapsed: float
    duration: float
    phase: str
    phase_summary: str
    statuses: dict[int, int]


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _bar(fraction: float, width: int = 6) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + "·" * (width - filled)


def pool_rows(snapshot: Snapshot) -> list[Row]:
    """Per pool: connections in use of the most allowed, pending checkouts, timeouts."""
    used = snapshot.by(
        "db.client.connection.count", POOL_NAME, **{"db.client.connection.state": "used"}
    )
    most = snapshot.by("db.client.connection.max", POOL_NAME)
    pending = snapshot.by("db.client.connection.pending_requests", POOL_NAME)
    timeouts = snapshot.by("db.client.connection.timeouts", POOL_NAME)
    rows = []
    for pool in sorted(set(used) | set(most) | set(timeouts)):
        in_use = used.get(pool, 0.0)
        ceiling = most.get(pool, math.nan)
        if math.isnan(ceiling):  # unbounded: no max, no bar
            usage = f"{in_use:.0f}/-"
        else:
            usage = f"{in_use:.0f}/{ceiling:.0f} {_bar(in_use / ceiling if ceiling else 0.0)}"
        rows.append(Row(pool, (usage, _count(pending.get(pool, 0)), _count(timeouts.get(pool, 0)))))
    return rows


def rate_limit_rows(snapshot: Snapshot) -> list[Row]:
    """Per policy: decisions allowed, rejected, and rejected in dry run (- if none in dry run)."""
    table: dict[str, dict[str, float]] = {}
    for attributes, value in snapshot.points("backpressure.rate_limit.requests"):
        results = table.setdefault(str(attributes.get(POLICY, "?")), {})
        result = str(attributes.get(RESULT, "?"))
        results[result] = results.get(result, 0) + value
    rows = []
    for policy, results in sorted(table.items()):
        dry_run = results.get("dry_run_rejected")
        cells = (_count(results.get("allowed", 0)), _count(results.get("rejected", 0)))
        rows.append(Row(policy, (*cells, "-" if dry_run is None else _count(dry_run))))
    return rows


def error_rows(snapshot: Snapshot) -> list[Row]:
    """Per error.type: exceptions mapped as handled (expected) and unhandled."""
    handled = snapshot.by("backpressure.exceptions", ERROR_TYPE, **{OUTCOME: "handled"})
    unhandled = snapshot.by("backpressure.exceptions", ERROR_TYPE, **{OUTCOME: "unhandled"})
    return [
        Row(kind, (_count(handled.get(kind, 0)), _count(unhandled.get(kind, 0))))
        for kind in sorted(set(handled) | set(unhandled))
    ]


def _p99(snapshot: Snapshot, name: str, key: str) -> dict[str, float]:
    """The 99th percentile (a bucket bound) of histogram ``name`` per value of ``key``."""
    return {
        str(attributes.get(key, "?")): quantile(point, 0.99)
        for attributes, point in snapshot.points(name)
        if isinstance(point, HistogramDataPoint)
    }


def loop_rows(snapshot: Snapshot) -> list[Row]:
    """Per event loop: busy share since the last collection, and scheduling delay (p99)."""
    busy = snapshot.by("backpressure.event_loop.utilization", LOOP_NAME)
    delay = _p99(snapshot, "backpressure.event_loop.delay", LOOP_NAME)
    return [
        Row(
            loop,
            (
                f"{busy.get(loop, 0):.0%} {_bar(busy.get(loop, 0))}",
                f"{delay[loop]:g}s" if loop in delay else "-",
            ),
        )
        for loop in sorted(set(busy) | set(delay))
    ]


def thread_pool_rows(snapshot: Snapshot) -> list[Row]:
    """Per thread pool: threads busy of the most, calls queued, wait for a thread (p99)."""
    used = snapshot.by("backpressure.thread_pool.used", THREAD_POOL_NAME)
    most = snapshot.by("backpressure.thread_pool.max", THREAD_POOL_NAME)
    queued = snapshot.by("backpressure.thread_pool.queue.length", THREAD_POOL_NAME)
    wait = _p99(snapshot, "backpressure.thread_pool.wait_time", THREAD_POOL_NAME)
    rows = []
    for pool in sorted(set(used) | set(most)):
        busy, ceiling = used.get(pool, 0.0), most.get(pool, 0.0)
        usage = f"{busy:.0f}/{ceiling:.0f} {_bar(busy / ceiling if ceiling else 0.0)}"
        waited = f"{wait[pool]:g}s" if pool in wait else "-"
        rows.append(Row(pool, (usage, _count(queued.get(pool, 0)), waited)))
    return rows


def http_pool_rows(snapshot: Snapshot) -> list[Row]:
    """Per HTTP server: connections active and idle, requests timed out waiting for one."""
    active = snapshot.by(
        "http.client.open_connections", "server.address", **{"http.connection.state": "active"}
    )
    idle = snapshot.by(
        "http.client.open_connections", "server.address", **{"http.connection.state": "idle"}
    )
    timeouts = snapshot.by("backpressure.http.client.pool.timeouts", "server.address")
    return [
        Row(
            server,
            (
                _count(active.get(server, 0)),
                _count(idle.get(server, 0)),
                _count(timeouts.get(server, 0)),
            ),
        )
        for server in sorted(set(active) | set(idle) | set(timeouts))
    ]


#: The view's sections, in order. Append to add rows (see the module docstring).
#: Redis pools report the database pool metrics, so they are rows of "pools".
SECTIONS: list[Section] = [
    Section("pools", ("used/max", "pending", "timeouts"), pool_rows),
    Section("HTTP pools", ("active", "idle", "timeouts"), http_pool_rows),
    Section("rate limits", ("allowed", "rejected", "dry run rej."), rate_limit_rows),
    Section("errors", ("handled", "unhandled"), error_rows),
    Section("event loop", ("busy", "delay p99"), loop_rows),
    Section("thread pools", ("used/max", "queued", "wait p99"), thread_pool_rows),
]


def _header_lines(header: Header) -> tuple[str, str]:
    total = sum(header.statuses.values())
    codes = " ".join(f"{code}:{n}" for code, n in sorted(header.statuses.items()))
    progress = f"[{header.elapsed:5.1f}s/{header.duration:g}s] requests {total} ({codes})"
    return progress, f"phase {header.phase}: {header.phase_summary}"


def _clip(line: str, width: int = WIDTH) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def plain_lines(header: Header, snapshot: Snapshot, sections: Sequence[Section]) -> list[str]:
    """The view as plain text: a progress line, then one line per row, none over 80."""
    progress, _ = _header_lines(header)
    lines = [_clip(progress)]
    for section in sections:
        for row in section.rows(snapshot):
            cells = ", ".join(
                f"{col} {cell}" for col, cell in zip(section.columns, row.cells, strict=True)
            )
            lines.append(_clip(f"  {section.title} {row.name}: {cells}"))
    return lines


def _rich_view(header: Header, snapshot: Snapshot, sections: Sequence[Section]) -> Any:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    progress, phase = _header_lines(header)
    parts: list[Any] = [
        Text(_clip(progress), style="bold"),
        Text(_clip(phase), style="yellow" if header.phase not in {"calm", "recovery"} else ""),
    ]
    for section in sections:
        rows = section.rows(snapshot)
        if not rows:
            continue
        table = Table(
            box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, width=WIDTH, padding=(0, 1)
        )
        table.add_column(section.title, style="cyan", no_wrap=True, overflow="ellipsis",
                         max_width=_NAME_WIDTH)  # fmt: skip
        for column in section.columns:
            table.add_column(column, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(row.name, *row.cells)
        parts += [Text(""), table]
    return Group(*parts)


class LiveView:
    """Shows the rows in place with ``rich`` on a terminal, as plain lines otherwise."""

    __slots__ = ("_live", "_out", "_phase", "_sections")

    def __init__(self, out: TextIO | None = None, sections: Sequence[Section] = ()) -> None:
        self._out = out if out is not None else sys.stdout
        self._sections = tuple(sections) or tuple(SECTIONS)
        self._phase: str | None = None
        self._live: Any = None
        if self._out.isatty():
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # the demo extra brings rich; plain lines without it
                return
            console = Console(file=self._out, width=min(WIDTH, Console(file=self._out).width))
            self._live = Live(console=console, auto_refresh=False, transient=False)
            self._live.start()

    @property
    def interactive(self) -> bool:
        return self._live is not None

    def update(self, header: Header, snapshot: Snapshot, *, tick: bool) -> None:
        """Redraw (rich) or, on a tick or a phase change, print the rows (plain)."""
        if self._live is not None:
            self._live.update(_rich_view(header, snapshot, self._sections), refresh=True)
            return
        if header.phase != self._phase:
            self._phase = header.phase
            print(_clip(f"-- phase {header.phase}: {header.phase_summary}"), file=self._out)
        if tick:
            print("\n".join(plain_lines(header, snapshot, self._sections)), file=self._out)
        self._out.flush()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
