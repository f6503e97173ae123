"""What a chaos run found: the report, its problems and its rendering; and with `--keep`, the
sandbox's final state written where a third party can recount it."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from bench.chaos.events import DiskFull, SecondDaemon, Timeline
from bench.chaos.settings import DUE_MARGIN_S
from flexbot import wire


@attrs.define
class Report:
    duration_s: float = 0.0  # from the first start to the final SIGTERM
    chaos_s: float = 0.0  # of which with kills, events and fault bursts
    kills: int = 0
    runs: int = 0
    final_exit: int | None = None
    unexpected_exits: list[int] = attrs.Factory(list)  # runs that ended by themselves
    intents: int = 0
    placed: int = 0
    intents_by_state: dict[str, int] = attrs.Factory(dict)
    market_orders: int = 0
    duplicates: list[str] = attrs.Factory(list)
    contracts_due: int = 0
    metering_accepted: int = 0
    metering_missing: list[str] = attrs.Factory(list)
    metering_duplicated: list[str] = attrs.Factory(list)
    baseline_duplicated: list[str] = attrs.Factory(list)
    identical_resends: int = 0
    # The last run, from its start (after the last kill) to its SIGTERM:
    last_run_s: float = 0.0
    last_run_orders: int = 0  # the sandbox's orders of ours created since its start
    last_run_orders_logged: int = 0  # its `order.placed` events
    last_run_metering: int = 0  # the journal's metering submissions acknowledged since its start
    last_run_metering_market: int = 0  # the sandbox's count of accepted metering, the increase
    last_run_metering_logged: int = 0  # its `verification.submitted` events for metering
    planned_two_daemons: int = 0
    planned_disk_full: int = 0
    two_daemons: list[SecondDaemon] = attrs.Factory(list)
    disk_full: list[DiskFull] = attrs.Factory(list)
    tracebacks: int = 0
    non_json_lines: list[str] = attrs.Factory(list)
    stray_stderr: list[str] = attrs.Factory(list)  # the daemon's stderr, but for a halt's words
    secrets: list[str] = attrs.Factory(list)
    disconnected_s: float = 0.0
    restarting_s: float = 0.0
    disconnected_by_endpoint: dict[str, float] = attrs.Factory(dict)
    reconnects: int = 0
    half_open_found: int = 0  # links the daemon declared dead for unanswered pings
    events: Counter[str] = attrs.Factory(Counter)
    injected: dict[str, int] = attrs.Factory(dict)
    sandbox_tracebacks: int = 0
    recount: str = ""  # with `--keep`: how a third party recounts from the files kept

    def problems(self) -> list[str]:
        found = []
        if self.kills < 1:
            found.append("the daemon was never killed")
        if self.final_exit != 0:
            found.append(f"the last run exited with {self.final_exit}, expected 0 after SIGTERM")
        if self.unexpected_exits:
            found.append(f"runs that ended by themselves, with {self.unexpected_exits}")
        if self.duplicates:
            found.append(f"duplicate market orders: {self.duplicates[:10]}")
        if self.contracts_due == 0:
            found.append("no contract's metering fell due: the run proves nothing about metering")
        if self.final_exit is None:
            found.append("the last run did not stop within its bound after SIGTERM")
        if self.metering_missing:
            found.append(f"metering missing for {self.metering_missing[:10]}")
        if self.metering_duplicated or self.baseline_duplicated:
            both = self.metering_duplicated + self.baseline_duplicated
            found.append(f"verification accepted twice for {both[:10]}")
        if self.last_run_orders < 1:
            found.append("the last run placed no order after the last restart")
        if self.last_run_metering < 1 or self.last_run_metering_market < 1:
            found.append("the last run had no metering accepted after the last restart")
        if len(self.two_daemons) != self.planned_two_daemons:
            found.append(
                f"{len(self.two_daemons)} two-daemon events of {self.planned_two_daemons} planned"
            )
        for i, second in enumerate(self.two_daemons, start=1):
            found += [f"two daemons #{i}: {p}" for p in second.problems()]
        if len(self.disk_full) != self.planned_disk_full:
            found.append(f"{len(self.disk_full)} disk-full events of {self.planned_disk_full}")
        for i, full in enumerate(self.disk_full, start=1):
            found += [f"disk full #{i}: {p}" for p in full.problems()]
        if self.tracebacks:
            found.append(f"{self.tracebacks} unhandled exceptions in the daemon's log")
        if self.non_json_lines:
            found.append(f"non-JSON lines in the daemon's log: {self.non_json_lines[:3]}")
        if self.stray_stderr:
            found.append(f"output on the daemon's stderr: {self.stray_stderr[:3]}")
        if self.secrets:
            found.append(f"secrets in the daemon's log: {self.secrets[:3]}")
        if self.sandbox_tracebacks:
            found.append(f"{self.sandbox_tracebacks} tracebacks in the sandbox's log")
        return found

    def render(self) -> str:
        share = self.disconnected_s / self.duration_s if self.duration_s else 0.0
        per_endpoint = ", ".join(f"{k} {v:.1f} s" for k, v in self.disconnected_by_endpoint.items())
        notable = (
            "order.unknown",
            "order.resolved",
            "order.lapsed",
            "order.not_placed",
            "order.rejected",
            "verification.retry",
            "auth.token_failed",
            "store.failed",
            "store.unwritable",
            "daemon.store_unusable",
        )
        lines = [
            f"chaos run: {self.duration_s:.0f} s wall ({self.chaos_s:.0f} s of kills, events and"
            f" bursts), {self.kills} SIGKILLs, {self.runs} daemon runs, last exit"
            f" {self.final_exit}",
            f"faults injected by the sandbox: {_fmt_counts(self.injected)}",
            f"orders: {self.intents} intents journalled, {self.placed} placed, "
            f"{self.market_orders} market orders of ours, duplicates {len(self.duplicates)}",
            f"  intents by state: {_fmt_counts(self.intents_by_state)}",
            f"metering: {self.contracts_due} contracts due, {self.metering_accepted} accepted, "
            f"missing {len(self.metering_missing)}, duplicated {len(self.metering_duplicated)}; "
            f"identical resends recognised by the market {self.identical_resends}",
            f"after the last restart ({self.last_run_s:.0f} s to its SIGTERM): orders placed"
            f" {self.last_run_orders} (sandbox; order.placed logged {self.last_run_orders_logged}),"
            f" metering accepted {self.last_run_metering} (journal outbox; sandbox"
            f" +{self.last_run_metering_market}; verification.submitted logged"
            f" {self.last_run_metering_logged})",
            self._render_two_daemons(),
            self._render_disk_full(),
            f"log: unhandled exceptions {self.tracebacks}, non-JSON lines "
            f"{len(self.non_json_lines)}, stray stderr lines {len(self.stray_stderr)}, secrets"
            f" {len(self.secrets)}; sandbox tracebacks {self.sandbox_tracebacks}",
            f"disconnected {self.disconnected_s:.1f} s in total ({share:.0%} of the run; any stream"
            f" down or the process dead), {self.restarting_s:.1f} s of it from a kill or a halt"
            f" until every stream was up again; by endpoint: {per_endpoint}; reconnects"
            f" {self.reconnects}, half-open links found {self.half_open_found}",
            "events: " + _fmt_counts({k: self.events[k] for k in notable if self.events[k]}),
        ]
        problems = self.problems()
        lines.append("PASS" if not problems else "FAIL: " + "; ".join(problems))
        return "\n".join(lines)

    def _render_two_daemons(self) -> str:
        seconds = self.two_daemons
        n = len(seconds)
        took = max((s.took_s for s in seconds), default=0.0)
        return (
            f"two daemons on one store: {n} events; the second exited 2 in"
            f" {sum(s.exit_code == 2 for s in seconds)}/{n} (max {took:.1f} s), named the first's"
            f" pid in {sum(s.named_first for s in seconds)}/{n}, did nothing else in"
            f" {sum(s.did == ['daemon.store_unusable'] for s in seconds)}/{n}, the first ran on"
            f" in {sum(s.first_ran_on for s in seconds)}/{n}"
        )

    def _render_disk_full(self) -> str:
        fulls = self.disk_full
        n = len(fulls)
        halted = sum(f.exit_code == 1 and len(f.store_failed) == 1 for f in fulls)
        failed = [e for f in fulls for e in f.store_failed]
        ready = [f.ready_after_s for f in fulls if f.ready_after_s is not None]
        return (
            f"disk full: {n} events; exit 1 with one store.failed in {halted}/{n} (halt in max"
            f" {max((f.halt_s for f in fulls), default=0.0):.1f} s; open orders"
            f" {sum(int(e.get('open_orders', 0)) for e in failed)}, cancelled"
            f" {sum(int(e.get('cancelled', 0)) for e in failed)}); the restart waited under the"
            f" full disk in {sum(f.waited > 0 and f.exited_while_full is None for f in fulls)}/{n}"
            f" (store.unwritable {sum(f.waited for f in fulls)}), ready after the disk was freed"
            f" in {len(ready)}/{n} (max {max(ready, default=0.0):.1f} s), placed orders again in"
            f" {sum(f.traded for f in fulls)}/{n}"
        )


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


# --- what a third party recounts ------------------------------------------------------------------


@attrs.frozen
class FinalState:
    """The sandbox's at the end, as the referee read it (and `--keep` writes it)."""

    now: datetime
    orders: list[dict[str, Any]]
    stats: dict[str, Any]


RECOUNT = """\
To recount, from the files in {dir}:
  sandbox-orders.json  GET /sandbox/orders at the end: every order the sandbox holds (owner,
                       order_id, side, created_at in market time, delivery_end, contracts);
  sandbox-stats.json   GET /sandbox/stats: verification_submissions, the accepted first sends per
                       order id and measurement type (identical resends: verification_duplicates);
  journal.db           the daemon's store (SQLite) after its last stop: tables orders, outbox;
  chaos-summary.json   the sandbox's clock at the end (now), the last restart (last_start_market,
                       market time; last_start_wall, epoch seconds) and the figures printed.
Orders: the order ids of alice's orders in sandbox-orders.json must be exactly the journal's
orders.order_id (dry_run = 0), each once: an order of alice's that no journal row owns is a
resend, a duplicate. Metering, per contract: each sell order of alice's with contracts whose
delivery_end is more than {margin} market seconds before `now` must count metering exactly once in
verification_submissions, and have an outbox row (order_id, 'metering') in state 'acked'. After the
last restart: alice's orders created at or after last_start_market, and the outbox's metering rows
acked (done_at) at or after last_start_wall. For instance:
  cd {dir}
  jq -r '.[] | select(.owner == "alice") | .order_id' sandbox-orders.json | sort > market.txt
  sqlite3 journal.db 'SELECT order_id FROM orders WHERE order_id NOT NULL AND NOT dry_run' \\
    | sort > journal.txt
  comm -3 market.txt journal.txt   # nothing: each order of alice's journalled, and only those
  jq '[.verification_submissions[] | select(.metering > 1)] | length' sandbox-stats.json  # 0
"""


def keep_final_state(
    keep: Path, workdir: Path, final: FinalState, timeline: Timeline, report: Report
) -> str:
    """Write what a third party needs to recount into `keep`; returns how to recount."""
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "sandbox-orders.json").write_text(json.dumps(final.orders, indent=1))
    (keep / "sandbox-stats.json").write_text(json.dumps(final.stats, indent=1))
    # The journal as one file (the daemon has stopped; a backup also folds in any WAL).
    copy = keep / "journal.db"
    copy.unlink(missing_ok=True)
    with (
        closing(sqlite3.connect(f"file:{workdir / 'flexbot.db'}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    assert timeline.last_start_market is not None
    summary = {
        "now": wire.format_datetime(final.now),
        "last_start_market": wire.format_datetime(timeline.last_start_market),
        "last_start_wall": timeline.last_start,
        "report": attrs.asdict(report, value_serializer=_jsonable),
        "problems": report.problems(),
    }
    (keep / "chaos-summary.json").write_text(json.dumps(summary, indent=1))
    text = RECOUNT.format(dir=keep, margin=DUE_MARGIN_S)
    (keep / "RECOUNT.txt").write_text(text)
    return text


def _jsonable(_: Any, __: Any, value: Any) -> Any:
    if isinstance(value, datetime):
        return wire.format_datetime(value)
    return value
