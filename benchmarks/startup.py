"""Start-up cost of this instrumentor under ``opentelemetry-instrument``.

Method: ``opentelemetry-instrument python -c pass`` with this package enabled,
and the same with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=backpressure`` (the
auto-loader then never imports it), run alternately (ABBA) ``ROUNDS`` times
each as fresh processes, wall time per process. Exporters are ``none`` so that
no network is involved; every other installed instrumentation loads in both
runs, so the difference is this package's: importing it, reading its settings
and registering its post-import hooks. The report gives both medians and the
difference of the medians in milliseconds (the target is at most 30 ms), plus
what the enabled run imported that the disabled run did not.

Run: ``python -m benchmarks startup``
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 20  # per variant
TARGET_MS = 30.0

_PROBE = "import sys, json; print(json.dumps(sorted(sys.modules)))"


def _environment(enabled: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    if not enabled:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "backpressure"
    return env


def _command(code: str) -> list[str]:
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    return [str(instrument), sys.executable, "-c", code]


def _run(enabled: bool) -> float:
    started = time.perf_counter()
    subprocess.run(
        _command("pass"), env=_environment(enabled), check=True, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def _modules(enabled: bool) -> set[str]:
    result = subprocess.run(
        _command(_PROBE), env=_environment(enabled), check=True, capture_output=True, text=True
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    _run(True), _run(False)  # warm the file-system caches
    enabled: list[float] = []
    disabled: list[float] = []
    for _ in range(ROUNDS // 2):  # ABBA: each block gives two runs of each
        for variant in (True, False, False, True):
            (enabled if variant else disabled).append(_run(variant))
    on, off = statistics.median(enabled), statistics.median(disabled)
    added_ms = (on - off) * 1000
    print(f"opentelemetry-instrument python -c pass, median of {len(enabled)} runs each:")
    print(f"  backpressure disabled  {off * 1000:8.1f} ms")
    print(f"  backpressure enabled   {on * 1000:8.1f} ms")
    print(f"  added                  {added_ms:8.1f} ms  (ratio {on / off:.3f})")
    print(f"  target                 {TARGET_MS:8.1f} ms at most")
    extra = sorted(
        {name.split(".")[0] for name in _modules(True) - _modules(False)} - {"otel_backpressure"}
    )
    print(f"  top-level modules only the enabled run imported: {extra or 'none'}")


if __name__ == "__main__":
    main()
