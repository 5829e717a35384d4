"""A private PostgreSQL server for tests that stop or restart it (never the shared one).

``initdb`` + ``pg_ctl`` in a temporary directory, on a free port on 127.0.0.1,
run as the ``postgres`` user when the tests run as root (``initdb`` refuses
root). Debian's binaries are under ``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} not found (install PostgreSQL's server binaries)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """One server: ``dsn``, ``restart()``; ``stop()`` when done."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="backpressure-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self.start()

    def _run(self, *command: str) -> None:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs["user"] = self._user
        subprocess.run(command, check=True, capture_output=True, cwd=self.directory, **kwargs)  # type: ignore[call-overload]

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(
            _bin("pg_ctl"),
            action,
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.directory / "log"),
            *extra,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._ctl("start", "-o", options)

    def restart(self) -> None:
        """Stop (fast: backends are terminated) and start again on the same port."""
        self._ctl("stop", "-m", "fast")
        self.start()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.stop()
