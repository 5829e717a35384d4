"""Start-up cost of this instrumentor under ``opentelemetry-instrument``.

Method: ``opentelemetry-instrument python -c pass`` with this package enabled,
and the same with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=backpressure`` (the
auto-loader then never imports it), run alternately (ABBA) ``ROUNDS`` times
each as fresh processes, wall time per process. Exporters are ``none`` so that
no network is involved; every other installed instrumentation loads in both
runs, so the difference is this package's: importing it, reading its settings
and registering its post-import hooks. The report gives both medians and the
difference of the medians in milliseconds, wall time and CPU time (user +
system of the child: less disturbed by other processes on a shared machine
than wall time), then the median and quartiles of the difference within each
ABBA block (runs next to each other in time, so a load that drifts over the
run cancels out); the target is at most 30 ms. It also lists what the enabled
run imported that the disabled run did not: no library, and how many of this
package's own modules.

Instructions: wall and CPU time on a shared 2-core machine move by tens of
milliseconds between runs, more than the difference measured. When valgrind
is installed, the benchmark also runs each variant once under callgrind and
reports the instructions the Python process executed (the one
``opentelemetry-instrument`` execs; its launcher is the same in both), which
repeat to within 0.1% whatever the load. About 4 M instructions make a
millisecond of this start-up here (3.17 G instructions in about 800 ms of CPU).

Bytecode: an installer (pip, or uv with ``--compile-bytecode``) writes the
``.pyc`` of every module it installs, and the rest of the environment runs from
them; an editable install or a source checkout under
``PYTHONDONTWRITEBYTECODE=1`` never gets them, so every start-up would compile
this package's sources again: before the start-up work, 338 M instructions
added without bytecode against 99 M with it, most of the 66 ms this benchmark
first reported. The benchmark therefore compiles the package's bytecode first,
as installing it does, and says so.

Run: ``python -m benchmarks startup``
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(enabled: bool) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one fresh process."""
    cpu, started = _cpu(), time.perf_counter()
    subprocess.run(
        _command("pass"), env=_environment(enabled), check=True, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started, _cpu() - cpu


def _modules(enabled: bool) -> set[str]:
    result = subprocess.run(
        _command(_PROBE), env=_environment(enabled), check=True, capture_output=True, text=True
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _instructions(enabled: bool) -> int | None:
    """Instructions the exec'd Python ran under callgrind; None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory() as directory:
        # the launcher execs Python in the same process: its profile, written
        # last to the same file, is the Python's
        out = Path(directory) / "callgrind.out"
        callgrind = ["--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}"]
        subprocess.run(
            [valgrind, *callgrind, *_command("pass")],
            env={**_environment(enabled), "PYTHONHASHSEED": "0"},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return None


def _compile_bytecode() -> str:
    """Write the package's ``.pyc`` files as an installer would; say where."""
    import otel_backpressure

    package = Path(otel_backpressure.__file__).parent
    if compileall.compile_dir(package, quiet=1):
        return f"{package}: bytecode written"
    return f"{package}: bytecode NOT written, the figures include compiling it"


def main() -> None:
    print(f"  {_compile_bytecode()}")
    _run(True), _run(False)  # warm the file-system caches
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    # per ABBA block, enabled minus disabled: neighbours in time, so a load that
    # drifts over the whole run cancels out of each
    paired: dict[str, list[float]] = {"wall": [], "CPU": []}
    half = {True: 0.5, False: -0.5}
    for _ in range(ROUNDS // 2):  # ABBA: each block gives two runs of each
        block = [(variant, _run(variant)) for variant in (True, False, False, True)]
        for variant, run in block:
            runs[variant].append(run)
        paired["wall"].append(sum(half[variant] * run[0] for variant, run in block))
        paired["CPU"].append(sum(half[variant] * run[1] for variant, run in block))
    print(f"opentelemetry-instrument python -c pass, median of {ROUNDS} runs each, in ms:")
    print(f"  {'':22} {'wall':>8} {'CPU':>8}")
    medians = {}
    for variant, label in ((False, "backpressure disabled"), (True, "backpressure enabled")):
        wall = statistics.median(run[0] for run in runs[variant]) * 1000
        cpu = statistics.median(run[1] for run in runs[variant]) * 1000
        medians[variant] = (wall, cpu)
        print(f"  {label:22} {wall:8.1f} {cpu:8.1f}")
    added = [on - off for on, off in zip(medians[True], medians[False], strict=True)]
    print(f"  {'added':22} {added[0]:8.1f} {added[1]:8.1f}   (target: at most {TARGET_MS:.0f})")
    for what, differences in paired.items():
        low, middle, high = statistics.quantiles([d * 1000 for d in differences], n=4)
        print(
            f"  added, {what} per ABBA block: median {middle:.1f} (quartiles {low:.1f}, {high:.1f})"
        )
    only_enabled = _modules(True) - _modules(False)
    ours = sorted(name for name in only_enabled if name.split(".")[0] == "otel_backpressure")
    extra = sorted({name.split(".")[0] for name in only_enabled} - {"otel_backpressure"})
    print(f"  top-level modules only the enabled run imported: {extra or 'none'}")
    print(f"  this package's modules it imported: {len(ours)} ({', '.join(ours)})")
    counts = {variant: _instructions(variant) for variant in (False, True)}
    if counts[True] is None or counts[False] is None:
        print("  instructions: valgrind not found, not counted")
        return
    added = counts[True] - counts[False]
    print(
        f"  instructions (callgrind, one run each): disabled {counts[False] / 1e6:,.1f} M,"
        f" enabled {counts[True] / 1e6:,.1f} M, added {added / 1e6:,.1f} M"
        f" (~{added / 4e6:.0f} ms at 4 M per ms)"
    )


if __name__ == "__main__":
    main()
