"""The Redis store's own connection to one server, and the deadline of its round trips.

A store has at most one round trip in flight per event loop, so one
connection serves it: a redis-py ``redis.asyncio`` connection object, made
with the client's settings, spoken to through its public
``send_packed_command`` and ``read_response``. The command goes out
pre-encoded (the store builds the RESP bytes); the reply is read by
redis-py's parser. That skips redis-py's generic command path (pool
checkout and release, retries, response callbacks, per-command
observability hooks), which costs more client CPU than everything else in a
decision.

**The deadline.** ``asyncio.timeout`` around each round trip arms a timer
and cancels it every time: about a fifth of a decision's client CPU. Here one
timer at a time watches whichever round trip is in flight. When it fires, it
cancels the round trip it was armed for if that one is still in flight;
otherwise it re-arms itself at the deadline of the one in flight now, or
stops when none is. A steady stream of round trips costs one timer per
``timeout`` seconds, not one per round trip, and each round trip is still
cut off at its own deadline. The cancellation becomes ``TimeoutError`` the
way ``asyncio.timeout`` does it (``Task.uncancel``): a cancellation from
outside that arrives meanwhile still propagates as ``CancelledError``.
Python 3.10 has no ``Task.uncancel``; there each round trip goes through
``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol, cast

__all__ = ["Link"]

# RESP pieces: a bulk string is $length CRLF bytes CRLF
_EVALSHA: Final = b"$7\r\nEVALSHA\r\n"
_EVAL: Final = b"$4\r\nEVAL\r\n"
_UNCANCEL: Final = hasattr(asyncio.Task, "uncancel")  # Python 3.11+


class _Task(Protocol):
    """The part of ``asyncio.Task`` used here (``cancelling``/``uncancel``: 3.11+)."""

    def cancel(self, msg: Any = None) -> bool: ...
    def cancelling(self) -> int: ...
    def uncancel(self) -> int: ...


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Link:
    """One connection on one event loop, for one script; round trips bounded by ``timeout``.

    Args:
        conn: an unconnected ``redis.asyncio`` connection (it connects on its
            first send, and again after an error dropped it).
        loop: the event loop it serves.
        timeout: seconds a round trip may take, connecting included.
        sha: the script's SHA1, hex (40 bytes); ``source`` its text, sent
            (EVAL) when the server answers NOSCRIPT.
        no_script: redis-py's ``NoScriptError``.
    """

    __slots__ = (
        "_armed",
        "_deadline",
        "_eval",
        "_evalsha",
        "_expired",
        "_handle",
        "_no_script",
        "_task",
        "conn",
        "loop",
        "timeout",
    )

    def __init__(
        self,
        conn: Any,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        sha: bytes,
        source: bytes,
        no_script: type[Exception],
    ) -> None:
        self.conn = conn
        self.loop = loop
        self.timeout = timeout
        self._evalsha = _EVALSHA + bulk(sha)
        self._eval = _EVAL + bulk(source)
        self._no_script = no_script
        # the round trip in flight: its task and deadline (loop time)
        self._task: _Task | None = None
        self._deadline = 0.0
        # the one timer, and the deadline it was armed for
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0
        # the task this link cancelled for its deadline, until it has seen that
        self._expired: _Task | None = None

    async def script(self, argc: int, body: bytes) -> Any:
        """Run the script: ``body`` is its ``argc`` RESP arguments after the script's own.

        Returns the reply (bytes). Raises ``TimeoutError`` after ``timeout``
        seconds, redis-py's ``ConnectionError`` and ``ResponseError`` as the
        connection raises them (a connection that failed mid-way is dropped
        by redis-py and connects again on the next call).
        """
        loop = self.loop
        current = asyncio.current_task(loop)
        if current is None or not _UNCANCEL:
            return await asyncio.wait_for(self._exchange(argc, body, self._evalsha), self.timeout)
        task = cast("_Task", current)
        cancelling = task.cancelling()
        self._task = task
        self._deadline = deadline = loop.time() + self.timeout
        if self._handle is None:
            self._armed = deadline
            self._handle = loop.call_at(deadline, self._fire)
        try:
            # _exchange inlined: one coroutine less on every decision's path
            conn = self.conn
            await conn.send_packed_command(
                b"*%d\r\n%b%b" % (argc + 2, self._evalsha, body), check_health=False
            )
            try:
                return await conn.read_response(disable_decoding=True)
            except self._no_script:  # see _exchange
                return await self._exchange(argc, body, self._eval)
        except asyncio.CancelledError:
            if self._expired is task and task.uncancel() <= cancelling:
                raise TimeoutError(f"no reply within {self.timeout:g} s") from None
            raise
        finally:
            self._task = self._expired = None

    async def _exchange(self, argc: int, body: bytes, script: bytes) -> Any:
        """Send one command (``script``: EVALSHA and the SHA, or EVAL and the source)."""
        conn = self.conn
        await conn.send_packed_command(
            b"*%d\r\n%b%b" % (argc + 2, script, body), check_health=False
        )
        try:
            return await conn.read_response(disable_decoding=True)
        except self._no_script:
            if script is self._eval:
                raise
            # a restarted or flushed server: EVAL runs the script and caches it again
            return await self._exchange(argc, body, self._eval)

    def _fire(self) -> None:
        """The timer: cut off the round trip it was armed for, or follow the one in flight."""
        self._handle = None
        task = self._task
        if task is None:
            return  # idle: the next round trip arms the timer again
        if self._deadline <= self._armed:  # deadlines only grow: this is that round trip
            self._expired = task
            task.cancel()
        else:
            self._armed = self._deadline
            self._handle = self.loop.call_at(self._deadline, self._fire)

    async def aclose(self) -> None:
        """Stop the timer and close the connection."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self.conn.disconnect()
