"""Make sure ``promtool`` and ``prometheus`` exist: the tests run both, and never skip.

The alert-rule tests run promtool; the end-to-end test runs a Prometheus
server of its own (tests/e2e/test_prometheus.py). On Debian as root it installs
the ``prometheus`` package, which ships both; anywhere else it says what to
install and fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

TOOLS = ("promtool", "prometheus")


def _present() -> bool:
    return all(shutil.which(tool) for tool in TOOLS)


def main() -> int:
    if _present():
        return 0
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        was_running = subprocess.run(["pgrep", "-x", "prometheus"], check=False).returncode == 0
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
            check=True,
            env=env,
        )
        if not was_running:
            # The package may start a system-wide server; the tests start their own.
            subprocess.run(["pkill", "-x", "prometheus"], check=False)
        if _present():
            return 0
    sys.stderr.write(
        "promtool and prometheus are needed by the tests: install Prometheus "
        "(Debian: apt-get install prometheus) and run again.\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
