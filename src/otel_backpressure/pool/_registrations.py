"""The table of pool sources one metric family reports, shared by the pool and HTTP families.

Each family (``PoolMetrics``, ``HttpClientMetrics``) keeps ``id(source) ->
registration``. The table is copied on every add and remove, so the
collection callbacks iterate it without taking the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ClassVar, Generic, Protocol, TypeVar

from otel_backpressure.pool._source import PoolSource, TimingRecorder


class Registration(Protocol):
    """What the table needs of a family's registration: the source and its recorder."""

    @property
    def source(self) -> PoolSource: ...

    @property
    def recorder(self) -> TimingRecorder | None: ...


R = TypeVar("R", bound=Registration)


class RegisteredSources(Generic[R]):
    """Add and remove sources copy-on-write; a family supplies its registration and flush."""

    _what: ClassVar[str] = "pool"  # how log messages name a source of this family

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(source) -> registration; copied on write so callbacks iterate without a lock
        self._registrations: dict[int, R] = {}
        self._failed: set[int] = set()

    def _new_registration(self, source: PoolSource, *, timings: bool) -> R:
        raise NotImplementedError

    def _flush(self, registration: R) -> None:
        raise NotImplementedError

    def _retire(self, registration: R) -> None:
        """Called under the lock as ``registration`` leaves the table."""

    def _removed(self, source: PoolSource, remaining: dict[int, R]) -> None:
        """Called after ``source`` left the table; ``remaining`` is the table without it."""

    def add(self, source: PoolSource, *, timings: bool) -> None:
        """Report ``source`` from the next collection on (idempotent)."""
        with self._lock:
            if id(source) in self._registrations:
                return
            registration = self._new_registration(source, timings=timings)
            registrations = dict(self._registrations)
            registrations[id(source)] = registration
            self._registrations = registrations
        recorder = registration.recorder
        if recorder is not None:
            recorder.flush = lambda: self._flush_safely(registration)
            source.add_recorder(recorder)

    def remove(self, source: PoolSource) -> None:
        """Stop reporting ``source``; what it measured before still counts. Safe twice."""
        with self._lock:
            registrations = dict(self._registrations)
            registration = registrations.pop(id(source), None)
            self._registrations = registrations
            if registration is None:
                return
            self._retire(registration)
        self._failed.discard(id(source))
        if registration.recorder is not None:
            source.remove_recorder(registration.recorder)
            self._flush_safely(registration)
        self._removed(source, registrations)

    def __contains__(self, source: object) -> bool:
        return id(source) in self._registrations

    def __len__(self) -> int:
        return len(self._registrations)

    def _read_each(self, read: Callable[[int, R], None]) -> None:
        """Call ``read(key, registration)`` for each live source, then flush its timings.

        A source that fails is skipped for this collection and logged once
        until it reads again; a source whose pool is gone is removed.
        """
        gone: list[PoolSource] = []
        for key, registration in list(self._registrations.items()):
            source = registration.source
            try:
                if not source.alive:
                    gone.append(source)
                    continue
                read(key, registration)
                self._failed.discard(key)
            except Exception:
                if key not in self._failed:  # log once per pool, not once per collection
                    self._failed.add(key)
                    logging.getLogger(type(self).__module__).exception(
                        "Cannot read %s %r; skipping it", self._what, source.name
                    )
            self._flush_safely(registration)
        for source in gone:
            self.remove(source)

    def _flush_safely(self, registration: R) -> None:
        try:
            self._flush(registration)
        except Exception:
            # logged as the family's own module, where the timings belong
            logging.getLogger(type(self).__module__).exception(
                "Cannot record timings of %s %r", self._what, registration.source.name
            )
