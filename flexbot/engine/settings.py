"""How the engine runs: the YAML `engine:` section, read key for key (`flexbot.config`)."""

from __future__ import annotations

import attrs
from attrs import frozen

from flexbot.backoff import Backoff
from flexbot.validators import at_least, greater_than, seconds


@frozen
class Supervision:
    """How a strategy's runner handles its failures (`runner.py`)."""

    max_failures: int = 5
    failure_window_s: float = 300.0
    backoff: Backoff = Backoff(base_s=1.0, cap_s=60.0)
    callback_timeout_s: float = 60.0


@frozen
class EngineSettings:
    """Each field checks itself, so a bad value is a located problem in the config and an error
    where the settings are built in code."""

    dry_run: bool = False  # paper trading for every strategy: nothing is sent
    cancel_on_shutdown: bool = True
    # An order's default expiry: this long before its window starts.
    expiry_lead_s: int = attrs.field(default=60, validator=at_least(0))
    # Per strategy: the facts (trades) it may lag behind before the oldest are dropped.
    ticker_buffer: int = attrs.field(default=256, validator=at_least(1))
    # A strategy failing `max_failures` times within `failure_window_s` is disabled; a failed one
    # is restarted after `restart_backoff_s`, doubling up to the cap; a callback running longer
    # than `callback_timeout_s` counts as a failure.
    max_failures: int = attrs.field(default=5, validator=at_least(1))
    failure_window_s: float = attrs.field(default=300.0, validator=greater_than(0))
    restart_backoff_s: float = attrs.field(default=1.0, validator=seconds())
    restart_backoff_cap_s: float = attrs.field(default=60.0, validator=seconds())
    callback_timeout_s: float = attrs.field(default=60.0, validator=greater_than(0))
    # How often the orders of unknown submissions are looked for.
    resolve_interval_s: float = attrs.field(default=5.0, validator=greater_than(0))
    # Unknown, absent from a listing this long: not placed.
    not_placed_after_s: float = attrs.field(default=10.0, validator=at_least(0))
    # Unknown this long past its expiry: lapsed.
    lapse_grace_s: float = attrs.field(default=60.0, validator=seconds(zero=True))
    kill_switch_poll_s: float = attrs.field(default=1.0, validator=greater_than(0))
    paper_tick_s: float = attrs.field(default=1.0, validator=greater_than(0))
    trades_kept: int = attrs.field(default=100, validator=at_least(1))
    cancel_in_flight: int = attrs.field(default=4, validator=at_least(1))

    @property
    def supervision(self) -> Supervision:
        """How each strategy's runner is supervised."""
        return Supervision(
            max_failures=self.max_failures,
            failure_window_s=self.failure_window_s,
            backoff=Backoff(base_s=self.restart_backoff_s, cap_s=self.restart_backoff_cap_s),
            callback_timeout_s=self.callback_timeout_s,
        )
