"""Bytes ⇄ model objects: JSON through orjson, types through the converter, and the WebSocket
message typed by its `type` (an order book by the hand-read fast path when it is plain)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from flexbot import model
from flexbot.problems import Invalid
from flexbot.wire.convert import CONVERTER, structure
from flexbot.wire.fastbook import fast_book_update
from flexbot.wire.scalars import describe

T = TypeVar("T")


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid.single((), f"not valid JSON: {exc}", "json_invalid") from None


def dumps(obj: object) -> bytes:
    """Serialize a model object (or plain data) to JSON bytes."""
    return orjson.dumps(CONVERTER.unstructure(obj))


def decode(raw: bytes | bytearray | memoryview | str, cls: type[T]) -> T:
    return structure(loads(raw), cls)


# --- WebSocket messages -------------------------------------------------------------------------

_MESSAGE_TYPES: Mapping[str, type[Any]] = {
    model.MessageType.CONTROL: model.Control,
    model.MessageType.ORDER_STATUS_UPDATE: model.OrderStatusUpdate,
    model.MessageType.CONTRACT_STATUS_UPDATE: model.ContractStatusUpdate,
    model.MessageType.TICKER_UPDATE: model.TickerUpdate,
    model.MessageType.EXPIRED_ORDER_UPDATE: model.ExpiredOrderUpdate,
    model.MessageType.ORDERBOOK_UPDATE: model.OrderBookUpdate,
}


def message_from_data(data: Any) -> model.Message:
    """Type a decoded WebSocket message by its `type`; an unknown type is kept as UnknownMessage."""
    if not isinstance(data, dict):
        raise Invalid.single((), f"expected a JSON object, got {describe(data)}", "type_error")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise Invalid.single(("type",), "required string field is missing", "missing")
    if kind == model.MessageType.ORDERBOOK_UPDATE:
        fast = fast_book_update(data)
        if fast is not None:
            return fast
    cls = _MESSAGE_TYPES.get(kind)
    if cls is None:
        return model.UnknownMessage(type=kind, raw=data)
    message: model.Message = structure(data, cls)
    return message


def parse_message(raw: bytes | bytearray | memoryview | str) -> model.Message:
    """Decode one WebSocket frame. Raises `Invalid` for a frame that cannot be understood."""
    return message_from_data(loads(raw))
