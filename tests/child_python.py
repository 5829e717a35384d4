"""Child processes of the tests.

``run_python`` runs this interpreter as an application would start, with a clean
OpenTelemetry environment: none of the test run's ``OTEL_*`` variables, exporters off
(``none``), plus what the caller gives. Optionally under ``opentelemetry-instrument``
(from this interpreter's bin directory). A non-zero exit fails the test with the child's
stderr. ``stop`` ends a long-running child (a server, an app) as its operator would:
SIGTERM, then SIGKILL if it does not exit in time.

Example::

    from child_python import run_python, run_under_opentelemetry_instrument

    code = "from otel_backpressure import BackpressureInstrumentor\\n" \\
           "print(BackpressureInstrumentor().is_instrumented_by_opentelemetry)"
    assert run_under_opentelemetry_instrument(code) == "True"
    result = run_python("script.py", cwd=tmp_path)      # a CompletedProcess
    code = stop(server_process, timeout=30)             # its exit code, None if killed
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_python(
    *args: str, instrument: bool = False, cwd: Path | None = None, **environment: str
) -> subprocess.CompletedProcess[str]:
    """``python *args`` (under ``opentelemetry-instrument`` if ``instrument``), finished."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        **environment,
    )
    command = [sys.executable, *args]
    if instrument:
        command.insert(0, os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument"))
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def run_under_opentelemetry_instrument(code: str, **environment: str) -> str:
    """The last line ``code`` printed (stripped), run under ``opentelemetry-instrument``."""
    lines = run_python("-c", code, instrument=True, **environment).stdout.strip().splitlines()
    return lines[-1] if lines else ""


def stop(process: subprocess.Popen[Any], *, timeout: float) -> int | None:
    """SIGTERM ``process`` (if it still runs) and wait ``timeout`` seconds; past that,
    SIGKILL it. Its exit code, or None when it had to be killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
