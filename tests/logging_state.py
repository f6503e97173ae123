"""`logs.configure` sets process-wide state (structlog, the root logger, `sys.excepthook`): tests
that configure logging put it back as it was with `logging_restored`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog


@contextmanager
def logging_restored() -> Iterator[None]:
    """`logs.configure` sets process-wide state (structlog, the root logger, sys.excepthook):
    put it back as it was afterwards."""
    saved_structlog = structlog.get_config()
    was_configured = structlog.is_configured()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    saved_hook = sys.excepthook
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved_structlog)
        else:
            structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        sys.excepthook = saved_hook
