"""The sandbox's liveness patches hypercorn and wsproto internals (`flexbot.sandbox.liveness`): it
checks, before patching, that they are all there, and refuses with a clear message otherwise."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import hypercorn.protocol.h11
import pytest
import wsproto.events
from hypercorn.protocol.ws_stream import WSStream

from flexbot.sandbox import liveness

ROOT = Path(__file__).parents[1]


def test_the_installed_versions_have_everything_the_sandbox_relies_on() -> None:
    assert liveness.check_internals() == []
    liveness.install()
    assert hypercorn.protocol.h11.WSStream is liveness.LiveWSStream  # type: ignore[attr-defined]
    liveness.install()  # idempotent


def test_a_missing_internal_stops_the_sandbox_with_what_and_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(WSStream, "_send_wsproto_event")
    with pytest.raises(liveness.UnsupportedServer) as refused:
        liveness.install()
    message = str(refused.value)
    assert "hypercorn.protocol.ws_stream.WSStream._send_wsproto_event is missing" in message
    assert "the sandbox needs hypercorn>=0.17,<0.19 and wsproto>=1.2,<2" in message
    assert re.search(r"installed: hypercorn \S+, wsproto \S+", message)
    assert "pip install -e ." in message


def test_a_changed_signature_is_reported_too(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _accept(self: WSStream, event: object) -> None: ...

    monkeypatch.setattr(WSStream, "_accept", _accept)
    monkeypatch.setattr(wsproto.events, "Ping", type("Ping", (), {}))  # takes no payload
    problems = liveness.check_internals()
    assert "hypercorn.protocol.ws_stream.WSStream._accept takes no message" in problems
    assert "wsproto.events.Ping takes no payload" in problems


def test_the_message_names_the_pins_of_pyproject() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.startswith(("hypercorn", "wsproto"))]
    assert " and ".join(pins) == liveness.NEEDS
