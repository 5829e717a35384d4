"""scripts/ensure_promtool.py keeps the package's server from starting, by Debian's policy-rc.d.

The install itself runs once per machine (``nox -s tests``); here the policy
file is a temporary path, run as invoke-rc.d runs it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from scripts.ensure_promtool import services_held


def test_a_policy_forbids_every_start_during_the_install_and_goes_after(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    with services_held(policy) as ours:
        assert ours
        # invoke-rc.d's call: <initscript ID> <action>; 101 is "forbidden by policy"
        result = subprocess.run([policy, "prometheus", "start"], check=False)
        assert result.returncode == 101
    assert not policy.exists()


def test_the_policy_goes_even_when_the_install_fails(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    with pytest.raises(subprocess.CalledProcessError), services_held(policy):
        raise subprocess.CalledProcessError(100, "apt-get")
    assert not policy.exists()


def test_a_policy_of_the_machine_is_left_as_it_is(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    with services_held(policy) as ours:
        assert not ours
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_nothing_kills_servers_by_name() -> None:
    script = Path(__file__).resolve().parents[3] / "scripts" / "ensure_promtool.py"
    text = script.read_text()
    assert "pkill" not in text
    assert "killall" not in text
