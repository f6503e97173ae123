"""The chaos run (`bench/chaos/`) in its short form, and the referee's downtime accounting.

The short form: a sandbox with every fault on at once (drops every 10 s, tokens living 5 s, 10%
5xx, ambiguous answers; 429 storms, half-open links and hanging answers in bursts), the daemon
trading with the three example strategies and two synthetic meters, SIGKILLed 5 times at random
moments and restarted; once a second daemon started on its store (it must exit 2 at once), once
its disk filled (it must halt with exit 1, its restart wait under the full disk, then trade once
the disk is freed). The sandbox referees: no duplicate order, no missing or doubled metering, no
traceback, no secret in the log, and a last run that placed orders and had metering accepted
after the last restart before its clean stop.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import chaos


def test_downtime_counts_any_stream_down_and_restarts() -> None:
    timeline = [
        *((1.0, "ws.connected", ep) for ep in chaos.ENDPOINTS),  # up after a 1 s start
        (3.0, "ws.disconnected", "ticker"),
        (3.5, "ws.connected", "ticker"),  # 0.5 s with one stream down
        (5.0, "kill", ""),
        (6.0, "ws.connected", "trade"),
        (6.5, "ws.connected", "ticker"),
        (7.0, "ws.connected", "orderbook"),  # 2 s from the kill until all are up again
        (9.0, "ws.disconnected", "trade"),  # down until the end, 10.0
    ]
    measured = chaos.downtime(timeline, started=0.0, end=10.0)
    assert measured.any_down_s == pytest.approx(1.0 + 0.5 + 2.0 + 1.0)
    assert measured.restarting_s == pytest.approx(1.0 + 2.0)
    assert measured.by_endpoint == pytest.approx(
        {"trade": 1.0 + 1.0 + 1.0, "ticker": 1.0 + 0.5 + 1.5, "orderbook": 1.0 + 2.0}
    )


events = st.tuples(
    st.floats(0, 100, allow_nan=False),
    st.sampled_from(["kill", "ws.connected", "ws.disconnected"]),
    st.sampled_from(chaos.ENDPOINTS),
)


@given(st.lists(events, max_size=40), st.floats(0, 120, allow_nan=False))
def test_downtime_is_bounded_by_the_run(timeline: list[tuple[float, str, str]], end: float) -> None:
    measured = chaos.downtime(timeline, started=0.0, end=end)
    eps = 1e-9
    assert -eps <= measured.restarting_s <= measured.any_down_s + eps
    assert measured.any_down_s <= end + eps
    for seconds in measured.by_endpoint.values():
        assert -eps <= seconds <= measured.any_down_s + eps


@pytest.mark.slow
def test_the_short_chaos_run_passes(tmp_path: Path) -> None:
    settings = chaos.ChaosSettings(
        duration_s=40, kills=5, seed=3, min_due=2, two_daemons=1, disk_full=1
    )
    keep = tmp_path / "kept"
    report = chaos.run(tmp_path, settings, keep=keep)
    print("\n" + report.render())
    assert report.problems() == []
    assert report.kills == 5
    assert report.placed > 0
    assert report.contracts_due >= 2
    assert sum(report.injected.values()) > 0
    # The last run proved itself: it traded after the last restart.
    assert report.last_run_orders >= 1
    assert report.last_run_metering >= 1
    assert report.last_run_metering_market >= 1
    # A second daemon on the store: exit 2, naming the first, nothing else done.
    [second] = report.two_daemons
    assert second.exit_code == 2
    assert second.took_s < chaos.SECOND_BOUND_S
    assert second.named_first
    assert second.did == ["daemon.store_unusable"]
    assert second.first_ran_on
    # The disk filled: exit 1 with one store.failed; the restart waited, then traded.
    [full] = report.disk_full
    assert full.exit_code == 1
    assert [e["retry_may_fix"] for e in full.store_failed] == [True]
    assert full.waited >= 1
    assert full.exited_while_full is None
    assert full.ready_after_s is not None
    assert full.traded
    assert report.events["store.failed"] == 1
    # What a third party recounts from.
    for name in ("sandbox-orders.json", "sandbox-stats.json", "journal.db", "RECOUNT.txt"):
        assert (keep / name).exists(), name
    assert "journal.db" in report.recount
