"""`flexbot replay`: a strategy run over a hand-built recording against the paper broker. Fills,
P&L, determinism, timers on market time, and refusals of bad input without a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from flexbot import config, model, wire
from flexbot.engine.loader import StrategySpec
from flexbot.engine.recording import Recorded
from flexbot.engine.replay import ReplayReport, load_recording, replay
from flexbot.market.streams import Endpoint
from flexbot.problems import Invalid
from flexbot.schedule import Timer
from flexbot.strategy import Context, Strategy, Window

REPO = Path(__file__).resolve().parents[1]
CODE_DIR = REPO / "strategies"
BUYER = REPO / "config" / "strategies" / "buyer.yaml"
SELLER = REPO / "config" / "strategies" / "seller.yaml"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # on the 15-minute grid
MINUTE = timedelta(minutes=1)


# --- building recordings ------------------------------------------------------------------------


def window(minutes_after_t0: int) -> Window:
    start = T0 + minutes_after_t0 * MINUTE
    return Window(start, start + 15 * MINUTE)


def entry(side: model.Side, starts: int, power_w: int, price: str) -> model.BookEntry:
    w = window(starts)
    return model.BookEntry(
        side=side,
        power=Decimal(power_w),
        price=Decimal(price),
        delivery_start=w.start,
        delivery_end=w.end,
        location=model.Location(location_id=("someone",), country_code="DE"),
    )


def ask(starts: int, power_w: int, price: str) -> model.BookEntry:
    """Someone's sell offer in the window starting `starts` minutes after T0."""
    return entry(model.Side.SELL, starts, power_w, price)


def bid(starts: int, power_w: int, price: str) -> model.BookEntry:
    return entry(model.Side.BUY, starts, power_w, price)


def book(
    asks: Sequence[model.BookEntry] = (), bids: Sequence[model.BookEntry] = ()
) -> dict[str, Any]:
    message = model.OrderBookUpdate(
        data=model.OrderBook(bids={"b": tuple(bids)}, asks={"a": tuple(asks)})
    )
    data: dict[str, Any] = wire.unstructure(message)
    return data


def ticker(at: datetime, price: str = "0.25") -> dict[str, Any]:
    w = window(60)
    message = model.TickerUpdate(
        data=model.Ticker(
            closed_at=at,
            price=Decimal(price),
            delivery_start=w.start,
            delivery_end=w.end,
            power=Decimal(1000),
        )
    )
    data: dict[str, Any] = wire.unstructure(message)
    return data


def line(at: datetime, endpoint: str, message: dict[str, Any]) -> bytes:
    return orjson.dumps({"at": wire.format_datetime(at), "endpoint": endpoint, "message": message})


def raw_line(at: datetime, text: str) -> bytes:
    """A frame that was not JSON when received: kept as `raw`, skipped on replay."""
    return orjson.dumps({"at": wire.format_datetime(at), "endpoint": "orderbook", "raw": text})


def write(path: Path, lines: Sequence[bytes]) -> Path:
    path.write_bytes(b"".join(one + b"\n" for one in lines))
    return path


def buyer_recording() -> list[bytes]:
    """The buyer (limit 0.28 €/kWh, 4 kW a window, 4 windows from 15 min ahead) over two books.

    At 10:00 its windows are 10:15…11:00: in 10:15 it takes 3 kW at 0.20 (2 kW at 0.25 no longer
    fits what it still needs, 1 kW at 0.35 is above its limit), in 10:30 1 kW at 0.27; an offer
    at 12:00 is beyond its horizon. A book recorded on `/trade` is not the strategy's and must
    not trade. At 10:05 its windows are 10:30…11:15: it takes 2 kW at 0.28 (its limit) in 11:15.
    """
    return [
        line(
            T0,
            "orderbook",
            book(
                asks=[
                    ask(15, 3000, "0.20"),
                    ask(15, 2000, "0.25"),
                    ask(15, 1000, "0.35"),
                    ask(30, 1000, "0.27"),
                    ask(120, 1000, "0.10"),
                ]
            ),
        ),
        raw_line(T0 + timedelta(seconds=10), "<html>502 Bad Gateway</html>"),
        line(T0 + MINUTE, "trade", book(asks=[ask(45, 1000, "0.05")])),
        line(T0 + 2 * MINUTE, "ticker", ticker(T0 + 2 * MINUTE)),
        line(T0 + 5 * MINUTE, "orderbook", book(asks=[ask(75, 2000, "0.28")])),
    ]


BUYER_WINDOWS = {  # window → (bought kWh, P&L €)
    "2026-11-23T10:15Z/10:30Z": ("0.750", "-0.1500"),  # 3 kW × 0.25 h × 0.20 €/kWh
    "2026-11-23T10:30Z/10:45Z": ("0.250", "-0.0675"),  # 1 kW × 0.25 h × 0.27 €/kWh
    "2026-11-23T11:15Z/11:30Z": ("0.500", "-0.1400"),  # 2 kW × 0.25 h × 0.28 €/kWh
}


def flexbot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flexbot.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )


def run_replay(spec: StrategySpec, events: Sequence[Recorded]) -> ReplayReport:
    return trio.run(replay, spec, events)


# --- the buyer ----------------------------------------------------------------------------------


def test_replay_cli_buys_cheap_offers_inside_the_buyers_horizon(tmp_path: Path) -> None:
    recording = write(tmp_path / "events.jsonl", buyer_recording())
    done = flexbot(
        "replay",
        str(recording),
        "--strategy",
        "config/strategies/buyer.yaml",
        "--code-dir",
        "strategies",
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    # 4 events: the raw frame is not one; the /trade line is one, but ignored.
    assert lines[0] == "events 4, orders 3, filled 3, cancelled 0, rejected by risk 0"
    assert lines[1].split() == ["window", "bought", "kWh", "sold", "kWh", "fills", "P&L", "€"]
    rows = {cells[0]: cells[1:] for cells in (row.split() for row in lines[2:-1])}
    assert rows == {
        name: [bought, "0.000", "1", pnl] for name, (bought, pnl) in BUYER_WINDOWS.items()
    }
    assert lines[-1].split() == ["total", "1.500", "0.000", "-0.3575"]


def test_replay_is_deterministic(tmp_path: Path) -> None:
    recording = write(tmp_path / "events.jsonl", buyer_recording())
    spec = config.read_strategy(BUYER, CODE_DIR)
    events = load_recording(recording)
    assert len(events) == 4
    first = run_replay(spec, events)
    second = run_replay(spec, events)
    assert first == second
    assert first.lines() == second.lines()
    assert first.cash_eur == Decimal("-0.3575")
    assert {str(w): (r.bought_kwh, r.cash_eur) for w, r in first.windows.items()} == {
        name: (Decimal(bought), Decimal(pnl)) for name, (bought, pnl) in BUYER_WINDOWS.items()
    }


# --- the seller ---------------------------------------------------------------------------------


def test_the_seller_sells_to_bids_at_or_above_its_floor() -> None:
    """The seller (floor 0.15, ask 0.30, 5 kW a window) offers its 4 windows at start. A bid at
    0.20 or exactly 0.15 (under its ask, not under its floor) taking the whole 5 kW makes it
    re-price to that bid and trade; a bid above its ask trades at its own ask; 0.10 never."""
    spec = config.read_strategy(SELLER, CODE_DIR)
    events = [
        Recorded(
            T0,
            Endpoint.ORDERBOOK,
            book(
                bids=[
                    bid(15, 6000, "0.20"),
                    bid(30, 5000, "0.15"),
                    bid(45, 5000, "0.40"),
                    bid(60, 5000, "0.10"),
                ]
            ),
        )
    ]
    report = run_replay(spec, events)
    assert report.windows.keys() == {window(15), window(30), window(45)}
    assert {w.start: (r.sold_kwh, r.bought_kwh, r.fills) for w, r in report.windows.items()} == {
        w.start: (Decimal("1.25"), Decimal(0), 1) for w in (window(15), window(30), window(45))
    }
    assert {w.start: r.cash_eur for w, r in report.windows.items()} == {
        window(15).start: Decimal("0.25"),  # 5 kW × 0.25 h × 0.20 €/kWh
        window(30).start: Decimal("0.1875"),  # × 0.15
        window(45).start: Decimal("0.375"),  # × 0.30, its own ask
    }
    assert report.cash_eur > 0
    # 4 offers at 0.30, two of them cancelled and placed again at the bid's price.
    assert (report.orders, report.filled, report.cancelled, report.rejected) == (6, 3, 2, 0)


def test_the_seller_never_sells_below_its_floor() -> None:
    """Bids just under the floor, for every window it could offer, over ten market minutes (its
    timer ticking, its horizon moving): it offers, it never re-prices, it never sells."""
    spec = config.read_strategy(SELLER, CODE_DIR)
    cheap = book(bids=[bid(start, 10000, "0.14") for start in range(15, 150, 15)])
    events = [Recorded(T0 + i * MINUTE, Endpoint.ORDERBOOK, cheap) for i in range(11)]
    report = run_replay(spec, events)
    assert report.events == 11
    assert report.orders >= 4
    assert (report.filled, report.cancelled) == (0, 0)
    assert report.windows == {}
    assert report.cash_eur == 0


# --- timers on market time ----------------------------------------------------------------------


@attrs.frozen
class TickParams:
    timers: list[datetime] = attrs.field(factory=list)
    tickers: list[datetime] = attrs.field(factory=list)


class Ticking(Strategy[TickParams]):
    """Notes the market time of each `on_timer` and `on_ticker` call in its (shared) params."""

    Params = TickParams
    version = "test"
    timer = Timer(interval_s=60)

    async def on_timer(self, ctx: Context) -> None:
        self.params.timers.append(ctx.now)

    async def on_ticker(self, ctx: Context, trade: model.Ticker) -> None:
        self.params.tickers.append(ctx.now)


def ticking(timer: Timer = Ticking.timer) -> StrategySpec:
    return StrategySpec(
        name="ticking", path=Path("ticking.yaml"), cls=Ticking, params=TickParams(), timer=timer
    )


def tickers_every_30_s(until: timedelta) -> list[Recorded]:
    times = [T0 + timedelta(seconds=s) for s in range(0, int(until.total_seconds()) + 1, 30)]
    return [Recorded(at, Endpoint.TICKER, ticker(at)) for at in times]


def test_an_interval_timer_fires_once_a_minute_over_ten_market_minutes() -> None:
    """The interval's first fire is one interval after the first event (not at it); a fire time
    equal to an event's time runs before that event; none runs after the last event. Events at
    10:00:00, 10:00:30 … 10:10:00: fires at 10:01 … 10:10, 10 of them."""
    spec = ticking()
    report = run_replay(spec, tickers_every_30_s(10 * MINUTE))
    assert report.events == 21
    assert spec.params.timers == [T0 + i * MINUTE for i in range(1, 11)]
    assert len(spec.params.tickers) == 21


def test_no_timer_fires_past_the_last_event() -> None:
    spec = ticking()
    events = tickers_every_30_s(10 * MINUTE)
    events[-1] = attrs.evolve(events[-1], at=T0 + 10 * MINUTE - timedelta(microseconds=1))
    run_replay(spec, events)
    assert spec.params.timers == [T0 + i * MINUTE for i in range(1, 10)]


def test_a_cron_timer_fires_at_its_matching_times_the_first_event_included() -> None:
    """A cron schedule fires at every match not before the first event: 10:00 itself too."""
    spec = ticking(Timer(cron="*/5 * * * *"))
    run_replay(spec, tickers_every_30_s(10 * MINUTE))
    assert spec.params.timers == [T0, T0 + 5 * MINUTE, T0 + 10 * MINUTE]


# --- bad input ----------------------------------------------------------------------------------


def test_a_broken_line_is_named_by_its_number(tmp_path: Path) -> None:
    good = line(T0, "ticker", ticker(T0))
    recording = write(
        tmp_path / "broken.jsonl", [good, raw_line(T0, "x"), b'{"at": "2026-11-2', good]
    )
    with pytest.raises(Invalid, match=r"broken\.jsonl, line 3: not a recorded event"):
        load_recording(recording)
    done = flexbot("replay", str(recording), "--strategy", str(BUYER), "--code-dir", "strategies")
    assert done.returncode == 2
    assert f"{recording}, line 3: not a recorded event" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "bad",
    [
        b"[1, 2]",
        b'{"at": "2026-11-23T10:00:00", "endpoint": "ticker", "message": {}}',  # no zone
        b'{"at": "2026-11-23T10:00:00Z", "endpoint": "tickr", "message": {}}',
        b'{"endpoint": "ticker", "message": {}}',
    ],
)
def test_a_line_that_is_no_recorded_event_is_named(tmp_path: Path, bad: bytes) -> None:
    recording = write(tmp_path / "bad.jsonl", [line(T0, "ticker", ticker(T0)), b"", bad])
    with pytest.raises(Invalid, match=r"bad\.jsonl, line 3: not a recorded event"):
        load_recording(recording)


def test_an_empty_recording_is_refused_clearly(tmp_path: Path) -> None:
    recording = write(tmp_path / "empty.jsonl", [])
    done = flexbot("replay", str(recording), "--strategy", str(BUYER), "--code-dir", "strategies")
    assert done.returncode == 2
    assert "flexbot replay: $: the recording holds no event" in done.stderr
    assert "Traceback" not in done.stderr
    # Raw frames only: nothing to replay either.
    only_raw = write(tmp_path / "raw.jsonl", [raw_line(T0, "?"), raw_line(T0, "!")])
    with pytest.raises(Invalid, match="the recording holds no event"):
        run_replay(config.read_strategy(BUYER, CODE_DIR), load_recording(only_raw))


def test_a_missing_strategy_file_is_refused(tmp_path: Path) -> None:
    recording = write(tmp_path / "events.jsonl", buyer_recording())
    missing = tmp_path / "nowhere.yaml"
    done = flexbot("replay", str(recording), "--strategy", str(missing))
    assert done.returncode == 2
    assert f"{missing}: $: cannot read the file: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
