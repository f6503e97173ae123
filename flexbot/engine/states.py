"""A strategy's saved state (`Strategy.save_state` / `load_state`): its JSON form and where it is
kept.

The JSON form is canonical (keys sorted, no spaces), so that equal states are equal bytes: the
runner writes a state only when its bytes changed. Only JSON data is accepted, checked before
anything is written, with the place of the first value that is not: a `Decimal` or a `datetime`
would otherwise come back as something else (or not at all).

The daemon keeps states in its store (`StoredStates`, table `strategy_state`); a replay keeps none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson

from flexbot import wire
from flexbot.store import AsyncStore


class StateKeeper(Protocol):
    """Where the runners keep their strategies' states, by strategy name."""

    async def load(self, strategy: str) -> str | None:
        """The state last saved (its JSON text), None if none was."""

    async def save(self, strategy: str, state: str, at: datetime) -> None:
        """Keep `state` (JSON text) as the strategy's, replacing the one before."""


class StoredStates:
    """`StateKeeper` in the daemon's store. A write is not fsynced (like the journal's status
    updates): it survives the process being killed, maybe not a power cut."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store

    async def load(self, strategy: str) -> str | None:
        return await self._store.run(self._store.sync.strategy_state, strategy)

    async def save(self, strategy: str, state: str, at: datetime) -> None:
        at_text = wire.format_datetime(at)
        await self._store.run(self._store.sync.save_strategy_state, strategy, state, at_text)


def encode(state: object) -> str:
    """The canonical JSON text of a state; TypeError or ValueError (saying where) if it is not
    a mapping of JSON data."""
    if not isinstance(state, Mapping):
        raise TypeError(f"the state must be a mapping, not {type(state).__name__}")
    return orjson.dumps(_plain(state, "$"), option=orjson.OPT_SORT_KEYS).decode()


def decode(text: str) -> dict[str, Any]:
    """The state of its JSON text; ValueError (TypeError) if it is not JSON (not an object)."""
    try:
        state = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(state, dict):
        raise TypeError(f"not a JSON object but {type(state).__name__}")
    return state


def _plain(value: object, where: str) -> object:
    """`value` as the plain types orjson writes (dict, list…), checked to be JSON data."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where}: a {type(value).__name__} is not JSON data (a Decimal or a datetime: save it as "
        "a str)"
    )
