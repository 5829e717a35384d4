"""Run Python code in a child process under ``opentelemetry-instrument``, as an app would start.

The child gets this environment without any ``OTEL_*`` variable of the test
run, exporters off (``none``), plus what the caller gives; it runs
``opentelemetry-instrument python -c CODE`` from this interpreter's bin
directory. A non-zero exit fails the test with the child's stderr.

Example::

    from instrumented_process import run_under_opentelemetry_instrument

    code = "from otel_backpressure import BackpressureInstrumentor\\n" \\
           "print(BackpressureInstrumentor().is_instrumented_by_opentelemetry)"
    assert run_under_opentelemetry_instrument(code) == "True"
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_under_opentelemetry_instrument(code: str, **environment: str) -> str:
    """The last line ``code`` printed (stripped), run with ``environment`` added."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        **environment,
    )
    bindir = os.path.dirname(sys.executable)
    result = subprocess.run(
        [os.path.join(bindir, "opentelemetry-instrument"), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""
