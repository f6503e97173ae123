"""Logging: one structlog pipeline, JSON lines to stdout, secrets redacted.

Code logs events, not prose: `log.info("order.submitted", order_id=..., strategy=...)`. Every line
gets an ISO UTC timestamp and a level. Secrets are kept out twice:

- before rendering, by key: the value of every key that names a secret (`password`, `api_key`,
  `refresh_token`, … see `flexbot.redaction.is_secret_key`), nested ones too, becomes `[redacted]`;
- after rendering, in the line itself (`Scrubber`, the last step): a traceback is text only once
  rendered, and a secret can hide in any message. Credentials in URLs, Bearer tokens, `key=value`
  forms of secret keys are hidden, and so are the very values this process holds: a `Secret` (a
  password, a token) registers itself with the configured pipeline (`remember_secret`).

Libraries that log through the standard library (hypercorn, httpx) are bridged into the same format
and scrubbed alike; so is the traceback of a crash (`sys.excepthook`). Text that is printed rather
than logged (an error message for the user) is scrubbed with `scrub`.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog

from flexbot import redaction
from flexbot.redaction import REDACTED, KnownSecrets, is_secret_key


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide the value of every key that names a secret, nested ones too."""
    for key, value in list(event_dict.items()):
        if is_secret_key(str(key)):
            event_dict[key] = REDACTED
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = _redact_nested(value)
    return event_dict


def _redact_nested(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_key(str(k)) else _redact_nested(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_nested(v) for v in value]
    return value


class Scrubber:
    """The pipeline's last step: the rendered line, scrubbed (see `flexbot.redaction.scrub`).

    It holds the secret values its lines are scrubbed of (`known`). There is no registry beside
    it: logging is process-wide by nature (structlog's configuration, the root logger, both set by
    `configure`), and the set lives in that configuration, reached through it by
    `remember_secret`, and gone with it (a test passes its own `known` to start from none).
    """

    def __init__(self, known: KnownSecrets, *, json: bool) -> None:
        self.known = known
        self.json = json

    def __call__(self, _: Any, __: str, line: str) -> str:
        scrubbed = redaction.scrub(line, self.known)
        if self.json and scrubbed != line:
            # The patterns keep a JSON line JSON; a held value spanning its syntax (absurd, but a
            # value is anything) must not cost a reader the line: it becomes a string in one.
            try:
                orjson.loads(scrubbed)
            except orjson.JSONDecodeError:
                return _orjson_text({"event": "log.scrubbed", "line": scrubbed})
        return scrubbed

    def excepthook(
        self, kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        """A crash's traceback, on stderr as Python prints it, scrubbed like a log line."""
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(redaction.scrub(text, self.known))


def _orjson_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(
    *,
    json: bool | None = None,
    level: str = "info",
    stream: TextIO | None = None,
    known: KnownSecrets | None = None,
) -> KnownSecrets:
    """Set up structlog and the stdlib bridge at program start; returns the set of secret values
    its lines are scrubbed of, which `remember_secret` adds to.

    `json=None` picks JSON unless the stream is a terminal (then a readable console format).
    A configuration made again (`flexbot run` applies the config's `logging` once it has read the
    config, and so its secrets) keeps the secret values held so far, unless `known` is given.
    """
    if known is None:
        previous = _scrubber()
        known = previous.known if previous is not None else KnownSecrets()
    out = stream or sys.stdout
    use_json = json if json is not None else not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    scrubber = Scrubber(known, json=use_json)
    # The renderer and the scrubber take and give text, not an event dict: typed as Any.
    render: list[Any] = [structlog.processors.format_exc_info, renderer, scrubber]
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
            *render,
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
                *render,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
    # httpx logs every request with its URL at INFO; our own events say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    sys.excepthook = scrubber.excepthook
    return scrubber.known


def _scrubber() -> Scrubber | None:
    """The configured pipeline's scrubber; None before `configure` (or while a test captures)."""
    processors = structlog.get_config()["processors"]
    return next((p for p in reversed(processors) if isinstance(p, Scrubber)), None)


def remember_secret(value: str, *, short_lived: bool = False) -> None:
    """Hide `value` wherever it appears in a line from now on (see `KnownSecrets` for what is
    held, and for how long). Before `configure` there is no line to hide it from: a no-op."""
    scrubber = _scrubber()
    if scrubber is not None:
        scrubber.known.add(value, short_lived=short_lived)


def scrub(text: str) -> str:
    """`text` scrubbed as a log line is: for what is printed, not logged (a user's message)."""
    scrubber = _scrubber()
    return redaction.scrub(text, scrubber.known if scrubber is not None else None)


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger with a `name`, so `add_logger_name` stamps our lines as it does stdlib ones."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def get_logger(name: str) -> Any:
    """A logger whose lines carry `logger=name`. Safe at import time: it is configured lazily,
    on first use, so `configure()` may run later."""
    return structlog.get_logger(name)
