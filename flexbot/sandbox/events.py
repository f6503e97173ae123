"""What happens in the sandbox market, as events: the engine returns them in order, the market
publishes them to its subscribers (the WebSocket fan-out, the contract lifecycle)."""

from __future__ import annotations

from attrs import frozen

from flexbot import model


@frozen
class OrderChanged:
    owner: str
    order: model.Order


@frozen
class ContractChanged:
    buyer: str
    seller: str
    contract: model.Contract


@frozen
class Traded:
    ticker: model.Ticker


@frozen
class Expired:
    expired: model.ExpiredOrder


@frozen
class BookChanged:
    """The public book changed: the server publishes a fresh snapshot."""


Event = OrderChanged | ContractChanged | Traded | Expired | BookChanged
