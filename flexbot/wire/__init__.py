"""The GLocalFlex JSON format: one cattrs converter, used by the client and the sandbox alike.

- Timestamps: ISO-8601 with a `T`, seconds, an optional fraction and a zone (`Z` or `±hh:mm`); they
  become timezone-aware UTC datetimes and are emitted with a `Z` (microseconds only when present).
- Numbers: powers, prices and energies become `Decimal`, built from the shortest repr of the float
  the JSON parser made, so `0.65` on the wire is exactly `Decimal("0.65")`, round trip included.
- Enums: their wire strings. Status fields keep names they do not know as plain strings.
- Inbound is tolerant of what does not matter (extra keys, the legacy `{"<ts>": v}` data point, a
  `null` country) and strict about types. Every failure is an `Invalid` with located problems.

One module a job: `scalars` (timestamps and numbers), `convert` (the converters and located
problems), `codec` (bytes ⇄ objects, WebSocket messages by type), `fastbook` (order books read by
hand, the hot path). Import the names below from `flexbot.wire`, not from those modules.
"""

from flexbot.wire.codec import decode, dumps, loads, message_from_data, parse_message
from flexbot.wire.convert import (
    CONVERTER,
    STRICT_CONVERTER,
    attrs_has,
    register_enum,
    structure,
    unstructure,
)
from flexbot.wire.fastbook import fast_book_update
from flexbot.wire.scalars import (
    decimal_to_json,
    describe,
    format_datetime,
    parse_datetime,
    to_decimal,
)

__all__ = [
    "CONVERTER",
    "STRICT_CONVERTER",
    "attrs_has",
    "decimal_to_json",
    "decode",
    "describe",
    "dumps",
    "fast_book_update",
    "format_datetime",
    "loads",
    "message_from_data",
    "parse_datetime",
    "parse_message",
    "register_enum",
    "structure",
    "to_decimal",
    "unstructure",
]
