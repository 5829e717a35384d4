"""Make sure ``promtool`` exists: the alert-rule tests run it, and never skip.

On Debian as root it installs the ``prometheus`` package (which ships promtool);
anywhere else it says what to install and fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    if shutil.which("promtool"):
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
            # The package may start a Prometheus server; only promtool is wanted.
            subprocess.run(["pkill", "-x", "prometheus"], check=False)
        if shutil.which("promtool"):
            return 0
    sys.stderr.write(
        "promtool is needed by the alert-rule tests: install Prometheus "
        "(Debian: apt-get install prometheus) and run again.\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
