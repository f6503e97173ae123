"""An operator's orders in the daemon's journal, so that the daemon never takes one for its own.

`flexbot orders place` sends an order by hand on the account the daemon trades. The market's
order carries no client id: an unknown submission of the daemon's is matched to market orders by
fingerprint, and an identical order placed by hand would be claimed, then cancelled by the kill
switch while the daemon's real order stayed live. So the command journals its order in the
daemon's store *before* sending it (origin `operator`, never followed by the daemon), and its
market id once known: the daemon claims no order the journal owns, and none identical to an
operator's order still in flight. SQLite in WAL mode lets the command write while the daemon runs.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import ParamSpec

from flexbot import model, wire
from flexbot.engine.orders import fingerprint_key
from flexbot.store import OPERATOR, JournalRow, Store, StoreError, failure, is_store_fault

P = ParamSpec("P")

STRATEGY = "operator"  # what `flexbot status` shows as the order's strategy


class TwinInFlight(Exception):
    """An unresolved order with the same fingerprint exists: nobody could tell them apart."""


class OperatorJournal:
    def __init__(self, store: Store) -> None:
        self._store = store

    @classmethod
    def open(cls, path: Path) -> OperatorJournal:
        return cls(Store.open(path))

    def _write(self, fn: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise _store_error(exc, self._store.path) from None

    def close(self) -> None:
        self._store.close()

    def owned(self, order_ids: list[str]) -> set[str]:
        """Those of `order_ids` a journalled order (the daemon's or an operator's) owns."""
        try:
            return self._store.journalled_order_ids(order_ids)
        except sqlite3.Error as exc:
            raise _store_error(exc, self._store.path) from None

    def before_send(self, request: model.OrderRequest, now: datetime) -> str:
        """Journal the order (pending) and return its client id; `TwinInFlight` if an identical
        order, the daemon's or another operator's, is still without a market id."""
        at = wire.format_datetime(now)
        client_id = str(uuid.uuid4())
        row = JournalRow(
            client_id=client_id,
            strategy=STRATEGY,
            strategy_version="-",
            fingerprint=fingerprint_key(request),
            request=wire.dumps(request).decode(),
            state="pending",
            created_at=at,
            updated_at=at,
            following=False,
            origin=OPERATOR,
        )
        try:
            twin = self._store.journal_unless_twin(row)
        except sqlite3.Error as exc:
            raise _store_error(exc, self._store.path) from None
        if twin is not None:
            what = (
                "the daemon resolves it within its expiry (`flexbot status` shows it)"
                if twin.origin != OPERATOR
                else "`flexbot orders list` shows whether it was placed"
            )
            raise TwinInFlight(
                f"an identical order ({twin.origin} {twin.strategy}, {twin.client_id}) is still "
                f"on its way or its outcome unknown: {what}; or change the price or power"
            )
        return client_id

    def outcome(
        self,
        client_id: str,
        outcome: str,
        now: datetime,
        *,
        order: model.Order | None = None,
        reason: str = "",
    ) -> None:
        """`placed` (with the market's order), `unknown` (the answer was lost: the order may
        exist, and until it is resolved no identical market order is claimed by the daemon) or
        `rejected`."""
        at = wire.format_datetime(now)
        if outcome == "placed":
            assert order is not None
            state = "done" if order.is_final else "open"
            self._write(
                self._store.update,
                client_id,
                state=state,
                updated_at=at,
                order_id=order.order_id,
                last_order=wire.dumps(order).decode(),
            )
        else:
            self._write(self._store.update, client_id, state=outcome, reason=reason, updated_at=at)

    def refused(self, client_id: str, reason: str, now: datetime) -> None:
        self._write(
            self._store.update,
            client_id,
            state="rejected",
            reason=reason,
            updated_at=wire.format_datetime(now),
        )


def _store_error(exc: sqlite3.Error, path: Path) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):  # the market id is already another order's
        return StoreError(f"{path}: the journal refused the order's news: {exc}")
    if is_store_fault(exc):
        return failure(exc, path, StoreError)
    return StoreError(f"{path}: {exc}")
