"""The demo's live view: rows read from each metrics snapshot, drawn in 80 columns.

In a terminal the view is redrawn in place with ``rich`` and fits the
terminal: at most 80 columns, and no more lines than it has (an 80x24
terminal shows every section; when rows outnumber the lines, the rows that
moved lately are shown and the idle ones counted, see :func:`frame_lines`).
When stdout is not a terminal (a pipe, a CI log) it prints the same rows as
plain lines every interval, each at most 80 characters.

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
import textwrap
from collections.abc import Callable, Mapping, Sequence
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

__all__ = [
    "RECENT",
    "SECTIONS",
    "WIDTH",
    "Frame",
    "Header",
    "LiveView",
    "Row",
    "Section",
    "frame_lines",
    "plain_lines",
]

#: Columns the view fits in, rich and plain alike.
WIDTH = 80
_NAME_WIDTH = 24
_CONTINUED = " " * 6  # a plain row's next line
_CELL_WIDTH = 9  # the narrowest column: spreads a section's few cells over the line


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
    """Per policy: decisions allowed, rejected, rejected in dry run, and the store's errors.

    ``-`` where a policy has none of that kind: no dry run, or a store that
    never failed (an in-memory one cannot).
    """
    table: dict[str, dict[str, float]] = {}
    for attributes, value in snapshot.points("backpressure.rate_limit.requests"):
        results = table.setdefault(str(attributes.get(POLICY, "?")), {})
        result = str(attributes.get(RESULT, "?"))
        results[result] = results.get(result, 0) + value
    errors = snapshot.by("backpressure.rate_limit.store.errors", POLICY)
    rows = []
    for policy, results in sorted(table.items()):
        dry_run = results.get("dry_run_rejected")
        failed = errors.get(policy)
        cells = (
            _count(results.get("allowed", 0)),
            _count(results.get("rejected", 0)),
            "-" if dry_run is None else _count(dry_run),
            "-" if failed is None else _count(failed),
        )
        rows.append(Row(policy, cells))
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
    Section(
        "rate limits", ("allowed", "rejected", "dry run rej.", "store errors"), rate_limit_rows
    ),
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


def _wrapped(line: str) -> list[str]:
    """``line`` over as many indented lines as it needs: a log loses no status code."""
    return textwrap.wrap(line, WIDTH, subsequent_indent=_CONTINUED) or [""]


def plain_lines(header: Header, snapshot: Snapshot, sections: Sequence[Section]) -> list[str]:
    """The view as plain text: a progress line, then each row, none over 80 columns.

    A row too long for one line goes on, between two cells, on an indented
    line: a log keeps every cell.
    """
    progress, _ = _header_lines(header)
    lines = _wrapped(progress)
    for section in sections:
        for row in section.rows(snapshot):
            cells = [f"{col} {cell}" for col, cell in zip(section.columns, row.cells, strict=True)]
            name = _clip(row.name, max(8, 44 - len(section.title)))  # room for the cells
            line = f"  {section.title} {name}: {cells[0]}"
            for index, cell in enumerate(cells[1:], start=2):
                comma = 1 if index < len(cells) else 0  # the one after this cell
                if len(line) + 2 + len(cell) + comma > WIDTH:
                    lines.append(_clip(line + ","))
                    line = f"{_CONTINUED}{cell}"
                else:
                    line += f", {cell}"
            lines.append(_clip(line))
    return lines


# -- the terminal frame -------------------------------------------------------

#: One line of the frame: (text, rich style) fragments.
Line = list[tuple[str, str]]

#: A row that changed within this many seconds of the run is "moving": when
#: the terminal is too short for every row, moving rows are shown first.
RECENT = 10.0
_TROUBLE_FREE = frozenset({"calm", "recovery"})


def _line_text(line: Line) -> str:
    return "".join(text for text, _ in line)


def _clip_line(line: Line, width: int) -> Line:
    """``line`` cut to ``width`` characters, the cut marked with an ellipsis."""
    if len(_line_text(line)) <= width:
        return line
    clipped: Line = []
    room = width - 1
    for text, style in line:
        if room <= 0:
            break
        clipped.append((text[:room], style))
        room -= len(text[:room])
    clipped.append(("…", ""))
    return clipped


def _section_lines(section: Section, rows: Sequence[Row], hidden: int, width: int) -> list[Line]:
    """A heading line (the title, then the column headings), then one line per row."""
    widths = [
        max([_CELL_WIDTH, len(heading), *(len(row.cells[index]) for row in rows)])
        for index, heading in enumerate(section.columns)
    ]
    name_width = max(8, min(_NAME_WIDTH, width - sum(widths) - len(widths)))
    # the cells take what the name column leaves: right-aligned, one space apart
    cells_width = width - name_width
    title = section.title + (f" +{hidden} idle" if hidden else "")
    headings = " ".join(h.rjust(w) for h, w in zip(section.columns, widths, strict=True))
    lines: list[Line] = [
        [(_clip(title, name_width).ljust(name_width), "bold cyan"),
         (headings.rjust(cells_width), "bold")]
    ]  # fmt: skip
    for row in rows:
        cells = " ".join(c.rjust(w) for c, w in zip(row.cells, widths, strict=True))
        name = _clip(row.name, name_width).ljust(name_width)
        lines.append([(name, "cyan"), (cells.rjust(cells_width), "")])
    return [_clip_line(line, width) for line in lines]


def frame_lines(
    header: Header,
    blocks: Sequence[tuple[Section, Sequence[Row]]],
    width: int,
    height: int,
    moved: Mapping[tuple[str, str], float] | None = None,
) -> list[Line]:
    """The live view in at most ``width`` x ``height`` characters.

    ``blocks`` are the sections with their current rows; ``moved`` maps
    ``(section title, row name)`` to the run's second its cells last changed.
    The progress and phase lines always come first; every section with rows
    then gets its heading line. When the rows do not all fit, rows that moved
    in the last ``RECENT`` seconds are kept first, then the most recently
    moved; the others are left out and counted on their section's heading
    (``+2 idle``). Nothing is ever cut at the bottom by the terminal.
    """
    moved = moved or {}
    progress, phase = _header_lines(header)
    top: list[Line] = [
        [(progress, "bold")],
        [(phase, "" if header.phase in _TROUBLE_FREE else "yellow")],
    ]
    top = [_clip_line(line, width) for line in top][: max(1, height)]
    shown = [(section, list(rows)) for section, rows in blocks if rows]
    room = height - len(top)
    if room < len(shown):  # not even a heading each: headings only, as many as fit
        fitting = shown[: max(0, room)]
        return top + [_section_lines(section, [], len(rows), width)[0] for section, rows in fitting]
    # which rows fit: moving first, then most recently moved, then in order
    candidates = [
        (index, position, moved.get((section.title, row.name), -math.inf))
        for index, (section, rows) in enumerate(shown)
        for position, row in enumerate(rows)
    ]
    candidates.sort(key=lambda c: (header.elapsed - c[2] > RECENT, -c[2], c[0], c[1]))
    kept = {(index, position) for index, position, _ in candidates[: room - len(shown)]}
    lines = list(top)
    for index, (section, rows) in enumerate(shown):
        visible = [row for position, row in enumerate(rows) if (index, position) in kept]
        lines += _section_lines(section, visible, len(rows) - len(visible), width)
    return lines


class Frame:
    """One frame of the live view as a ``rich`` renderable that fits the console.

    Rendered at the console's width and height (``options.max_height`` is the
    terminal's), through :func:`frame_lines`.
    """

    __slots__ = ("blocks", "header", "moved")

    def __init__(
        self,
        header: Header,
        blocks: Sequence[tuple[Section, Sequence[Row]]],
        moved: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        self.header = header
        self.blocks = blocks
        self.moved = dict(moved or {})

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        height = options.height or options.max_height
        lines = frame_lines(self.header, self.blocks, options.max_width, height, self.moved)
        text = Text("\n").join(Text.assemble(*line) for line in lines)
        text.no_wrap = True
        text.end = ""
        yield text


class LiveView:
    """Shows the rows in place with ``rich`` on a terminal, as plain lines otherwise.

    On a terminal the frame fits its size (at most 80 columns) whatever the
    number of rows: see :func:`frame_lines`.
    """

    __slots__ = ("_cells", "_live", "_moved", "_out", "_phase", "_sections")

    def __init__(self, out: TextIO | None = None, sections: Sequence[Section] = ()) -> None:
        self._out = out if out is not None else sys.stdout
        self._sections = tuple(sections) or tuple(SECTIONS)
        self._phase: str | None = None
        self._live: Any = None
        # (section title, row name) -> its cells, and the run's second they last changed
        self._cells: dict[tuple[str, str], tuple[str, ...]] = {}
        self._moved: dict[tuple[str, str], float] = {}
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

    def frame(self, header: Header, snapshot: Snapshot) -> Frame:
        """This snapshot's frame, noting which rows moved since the last one."""
        blocks = [(section, section.rows(snapshot)) for section in self._sections]
        for section, rows in blocks:
            for row in rows:
                key = (section.title, row.name)
                if self._cells.get(key) != row.cells:
                    self._cells[key] = row.cells
                    self._moved[key] = header.elapsed
        return Frame(header, blocks, self._moved)

    def update(self, header: Header, snapshot: Snapshot, *, tick: bool) -> None:
        """Redraw (rich) or, on a tick or a phase change, print the rows (plain)."""
        if self._live is not None:
            self._live.update(self.frame(header, snapshot), refresh=True)
            return
        if header.phase != self._phase:
            self._phase = header.phase
            phase = f"-- phase {header.phase}: {header.phase_summary}"
            print("\n".join(_wrapped(phase)), file=self._out)
        if tick:
            print("\n".join(plain_lines(header, snapshot, self._sections)), file=self._out)
        self._out.flush()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
