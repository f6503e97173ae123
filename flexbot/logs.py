"""Logging: one structlog pipeline, JSON lines to stdout, secrets redacted.

Code logs events, not prose: `log.info("order.submitted", order_id=..., strategy=...)`. Every line
gets an ISO UTC timestamp and a level; keys that name secrets (and any Bearer credential inside a
value) are replaced by `[redacted]` before rendering, so a token can never reach the journal.
Libraries that log through the standard library (hypercorn, httpx) are bridged into the same format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

REDACTED = "[redacted]"
SECRET_KEYS = frozenset(
    {
        "password",
        "access_token",
        "refresh_token",
        "token",
        "authorization",
        "client_secret",
        "secret",
        "cookie",
        "set-cookie",
    }
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_FORM_SECRET = re.compile(r"(?i)\b(password|refresh_token|access_token)=([^&\s]+)")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = _BEARER.sub(r"\1" + REDACTED, value)
        return _FORM_SECRET.sub(r"\1=" + REDACTED, value)
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else _scrub(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide secrets by key and Bearer/form credentials by value."""
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _orjson_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(
    *, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    """Set up structlog and the stdlib bridge once, at program start.

    `json=None` picks JSON unless the stream is a terminal (then a readable console format).
    """
    out = stream or sys.stdout
    use_json = json if json is not None else not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.stdlib.add_logger_name,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda name="flexbot", *_: _NamedPrintLogger(out, name),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
    # httpx logs every request with its URL at INFO; our own events say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger with a `name`, so `add_logger_name` stamps our lines as it does stdlib ones."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def get_logger(name: str) -> Any:
    """A logger whose lines carry `logger=name`. Safe at import time: it is configured lazily,
    on first use, so `configure()` may run later."""
    return structlog.get_logger(name)
