"""Make sure ``promtool`` and ``prometheus`` exist: the tests run both, and never skip.

The alert-rule tests run promtool; the end-to-end test runs a Prometheus
server of its own (tests/e2e/test_prometheus.py). On Debian as root it installs
the ``prometheus`` package, which ships both; anywhere else it says what to
install and fails.

The package's maintainer scripts start a system-wide server (``invoke-rc.d``
or ``deb-systemd-invoke``), which the tests do not want. Both ask
``/usr/sbin/policy-rc.d`` first, Debian's documented way to keep an install
from starting services: while the package installs, a policy that forbids every
action (exit 101) is in place, unless the machine already has a policy of its
own (a container's usually forbids the same), which is left alone. If that
policy let the package's server start anyway, only that service is stopped,
through its own init script or unit: the package was not installed before,
so that service is the one this install started, and no other Prometheus (a
test's, another user's) is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOOLS = ("promtool", "prometheus")
POLICY = Path("/usr/sbin/policy-rc.d")
#: invoke-rc.d's interface: 101 means "action forbidden by policy"
DENY_ALL = "#!/bin/sh\n# scripts/ensure_promtool.py is installing: no service starts\nexit 101\n"
SERVICE = "prometheus"


def _present() -> bool:
    return all(shutil.which(tool) for tool in TOOLS)


@contextmanager
def services_held(policy: Path = POLICY) -> Iterator[bool]:
    """Forbid service starts while the block runs; yields whether this policy is ours.

    An existing policy file is never replaced or removed.
    """
    if policy.exists():
        yield False
        return
    policy.write_text(DENY_ALL)
    policy.chmod(0o755)
    try:
        yield True
    finally:
        policy.unlink(missing_ok=True)


def stop_packaged_service() -> None:
    """Stop the package's own service if the install started it (and nothing else)."""
    if Path("/run/systemd/system").is_dir():
        active = subprocess.run(
            ["systemctl", "is-active", "--quiet", f"{SERVICE}.service"], check=False
        )
        if active.returncode == 0:
            subprocess.run(["systemctl", "stop", f"{SERVICE}.service"], check=False)
        return
    script = Path("/etc/init.d") / SERVICE
    # the init script stops the process in its own pid file (/run/prometheus/prometheus.pid)
    running = script.exists() and (
        subprocess.run([script, "status"], stdout=subprocess.DEVNULL, check=False).returncode == 0
    )
    if running:
        subprocess.run([script, "stop"], check=False)


def main() -> int:
    if _present():
        return 0
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        with services_held() as ours:
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
                check=True,
                env=env,
            )
        if not ours:  # a policy of the machine's own decided; stop what it let start
            stop_packaged_service()
        if _present():
            return 0
    sys.stderr.write(
        "promtool and prometheus are needed by the tests: install Prometheus "
        "(Debian: apt-get install prometheus) and run again.\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
