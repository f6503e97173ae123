"""`flexbot demo`, as `make demo` runs it: the whole cycle in one process, ending with a summary."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.processes import ROOT, child_env

pytestmark = pytest.mark.slow


def test_the_demo_trades_verifies_and_settles_within_its_duration() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flexbot.cli", "demo", "--duration", "30", "--time-scale", "180"],
        capture_output=True,
        text=True,
        timeout=90,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert out.count("[market ") >= 4  # progress while it runs
    settled = re.search(
        r"contracts\s+(\d+) verified, (\d+) failed verification, (\d+) settled", out
    )
    assert settled is not None, out
    assert int(settled[3]) >= 1, out
    meterings = re.search(r"(\d+) baselines and (\d+) meterings acknowledged", out)
    assert meterings is not None
    assert int(meterings[1]) >= 1
    assert int(meterings[2]) >= 1
    # The simulated fleet was discovered through the asset protocol, and sized the offers.
    fleet = re.search(
        r"fleet\s+(\d+) assets at (\d+) sites; next 2 h: ([\d.]+) kWh deliverable", out
    )
    assert fleet is not None, out
    assert (int(fleet[1]), int(fleet[2])) == (4, 2)
    assert float(fleet[3]) > 0
    offered = re.search(r"offers\s+([\d.]+) kWh offered in all, ([\d.]+) kWh sold", out)
    assert offered is not None, out
    assert float(offered[1]) > 0
