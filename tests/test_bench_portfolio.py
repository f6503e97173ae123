"""`bench/portfolio.py` end to end in a tiny configuration (50 meters, 10 assets, a few seconds),
so that the benchmark cannot rot: every section prints, and no reading is lost on the way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT, child_env
from tests.test_meters_mqtt import mosquitto_binary

pytestmark = pytest.mark.slow

TINY = (
    *("--meters", "50", "--assets", "10", "--duration", "2", "--warm-up", "1", "--idle", "1"),
    *("--ceiling", "500", "--pool-meters", "50", "--fleet-assets", "10", "--runs", "1"),
)


def test_the_portfolio_benchmark_prints_every_figure_and_loses_no_reading() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "portfolio.py"), *TINY],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Meters.metering" in out
    assert "0 meters flagged" in out
    assert "receive + deliverable" in out
    if mosquitto_binary("mosquitto") is None:
        assert "skipped: no mosquitto binary" in out
        return
    readings, ceiling = (
        next(line for line in out.splitlines() if line.lstrip().startswith(start))
        for start in ("readings", "daemon ")
    )
    assert "lost 0 " in readings
    assert "lost 0 " in ceiling
    assert "10 of 10 discovered" in out
