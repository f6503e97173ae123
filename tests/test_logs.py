"""No secret in any log line or output: URLs shown without credentials, every rendered line (its
traceback too) scrubbed of credentials and of the secret values the process holds.

The tests run the real pipeline (`logs.configure`) writing to a buffer, and drive the code that
logged each leak seen: the daemon's `clock.sync_failed` and `config.reload_failed`, `check-config`'s
summary, a strategy's exception, a message with `api_key=`, an MQTT meter's password, a password
file's content.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import attrs
import httpx
import orjson
import pytest
import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import cli, config, daemon, logs, model
from flexbot.market.auth import TOKEN_PATH, Secret
from flexbot.market.session import resolve_password
from flexbot.meters.mqtt import MqttMeter
from flexbot.meters.source import MqttSettings, Route
from flexbot.redaction import REDACTED, KnownSecrets, redact_url, scrub
from flexbot.strategy import Context, Strategy
from tests.conftest import Sandbox
from tests.engine_harness import running_engine, spec, trader, until
from tests.logging_state import logging_restored

URL_PASSWORD = "hunter2-in-the-url"
MARKET_URL = f"https://operator:{URL_PASSWORD}@market.test"


class Output:
    """What the configured pipeline wrote, and the secret values it holds."""

    def __init__(self, *, json: bool) -> None:
        self.buffer = io.StringIO()
        self.known = logs.configure(json=json, stream=self.buffer, known=KnownSecrets())

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events() if e.get("event") == name]
        assert found, f"no {name} in:\n{self.text}"
        return found[-1]


@pytest.fixture
def output() -> Iterator[Output]:
    """The real pipeline, as the daemon runs it (JSON), with no secret held yet."""
    with logging_restored():
        yield Output(json=True)


@pytest.fixture
def restored() -> Iterator[None]:
    """For tests that run `cli.main`, which configures logging itself."""
    with logging_restored():
        yield


def write_config(root: Path, url: str = MARKET_URL, **market: Any) -> Path:
    (root / "password").write_text("market-password-from-file\n", encoding="utf-8")
    document = {
        "market": {
            "url": url,
            "username": "alice",
            "password": "file:password",
            "clock": "sandbox",
            **market,
        },
        "store": {"path": "flexbot.db"},
    }
    path = root / "flexbot.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def fail(exc: Exception) -> None:
    raise exc


# --- the leaks seen -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_market_url_with_credentials_never_reaches_clock_sync_failed(
    output: Output, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's HTTPStatusError names the request URL, userinfo and all; the daemon logged it."""

    def market(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            grant = {"access_token": "access-0123456789", "expires_in": 300}
            return httpx.Response(200, json={**grant, "refresh_token": "refresh-0123456789"})
        return httpx.Response(503, json={"detail": "the clock is down"})

    class MockedClient(httpx.AsyncClient):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(transport=httpx.MockTransport(market), **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", MockedClient)
    loaded = config.load(write_config(tmp_path), {})

    assert await daemon.run(loaded, signals=False) == 1

    reason = output.event("clock.sync_failed")["reason"]
    assert "503" in reason
    assert f"https://{REDACTED}@market.test/sandbox/clock" in reason
    assert URL_PASSWORD not in output.text
    assert "operator" not in output.text
    assert "market-password-from-file" not in output.text


@pytest.mark.anyio
async def test_a_market_url_with_credentials_never_reaches_config_reload_failed(
    output: Output, tmp_path: Path
) -> None:
    path = write_config(tmp_path)
    loaded = config.load(path, {})
    write_config(tmp_path, f"ftp://operator:{URL_PASSWORD}@market.test")

    await daemon._reload(loaded, cast(Any, None))  # an invalid config: the engine is not touched

    problems = output.event("config.reload_failed")["problems"]
    assert any("$.market.url" in line for line in problems)
    assert URL_PASSWORD not in output.text


def test_check_config_shows_the_market_url_without_its_credentials(
    restored: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f"{MARKET_URL}:8443/?api_key=k-0123456789&region=eu")

    assert cli.main(["check-config", "--config", str(path)]) == 0

    out, err = capsys.readouterr()
    assert f"market https://{REDACTED}@market.test:8443/?api_key={REDACTED}&region=eu as " in out
    for secret in (URL_PASSWORD, "k-0123456789", "market-password-from-file"):
        assert secret not in out + err


def test_a_url_refused_on_the_command_line_is_shown_without_its_credentials(
    restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["watch", "ticker", "--url", f"ftp://operator:{URL_PASSWORD}@market.test"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--url 'ftp://{REDACTED}@market.test'" in err
    assert URL_PASSWORD not in err


@attrs.frozen
class NoParams:
    pass


class LeakyToken(Strategy[NoParams]):
    """Fails on a book with the market's access token in its message, once it is given one."""

    Params = NoParams
    token: ClassVar[str | None] = None

    async def on_book(self, ctx: Context, book: model.OrderBook) -> None:
        if LeakyToken.token is not None:
            raise RuntimeError(f"the price service refused {LeakyToken.token}")


@pytest.mark.anyio
async def test_a_token_in_a_strategy_exception_is_scrubbed_from_the_rendered_traceback(
    output: Output, sandbox: Sandbox
) -> None:
    """The traceback is text only once `format_exc_info` has rendered it: after the key-based
    redaction ran. The scrubber runs on the rendered line, so it hides the token there too."""
    async with trader(sandbox) as bob, running_engine(sandbox, [spec(LeakyToken)]) as h:
        token = await h.market.tokens.token()
        LeakyToken.token = token
        try:
            await bob.place(model.Side.SELL, 1000, 0.25, bob.window(1))  # a new book
            await until(lambda: '"strategy.failed"' in output.text)
        finally:
            LeakyToken.token = None
    failed = output.event("strategy.failed")
    assert f"RuntimeError: the price service refused {REDACTED}" in failed["exception"]
    assert "Traceback (most recent call last)" in failed["exception"]
    assert token not in output.text


@pytest.mark.parametrize("use_json", [True, False], ids=["json", "console"])
def test_an_api_key_in_a_message_is_redacted(use_json: bool) -> None:
    with logging_restored():
        out = Output(json=use_json)
        log = logs.get_logger("flexbot.meters.http")
        log.warning("meter.poll_failed", reason="GET https://m.test/v1?api_key=k-111111 failed")
        log.warning("meter.poll_failed", reason="refused: api_key=k-222222, retrying")
        log.warning("meter.poll_failed", reason='answer {"apiKey": "k-333333", "n": 1}')
        log.warning("meter.poll_failed", api_key="k-444444", headers={"X-Api-Key": "k-555555"})
    for secret in ("k-111111", "k-222222", "k-333333", "k-444444", "k-555555"):
        assert secret not in out.text
    assert out.text.count(REDACTED) == 5
    if use_json:
        assert len(out.events()) == 4  # every line still JSON


@pytest.mark.parametrize("use_json", [True, False], ids=["json", "console"])
def test_lines_from_the_stdlib_bridge_are_scrubbed_traceback_and_all(use_json: bool) -> None:
    with logging_restored():
        out = Output(json=use_json)
        Secret("refresh-abcdef-987654", short_lived=True)
        try:
            fail(ValueError("lost refresh-abcdef-987654 with Authorization: Bearer tok.abc.def"))
        except ValueError:
            logging.getLogger("hypercorn.error").exception("Error in ASGI application")
        logging.getLogger("httpx").warning("HTTP Request: GET %s", f"{MARKET_URL}/api?sig=s-9876")
    for secret in ("refresh-abcdef-987654", "tok.abc.def", URL_PASSWORD, "s-9876"):
        assert secret not in out.text
    assert "ValueError: lost" in out.text


def test_an_mqtt_meters_password_is_hidden_wherever_it_appears(
    output: Output, tmp_path: Path
) -> None:
    (tmp_path / "mqtt-password").write_text("mqtt-broker-pw-42\n", encoding="utf-8")
    path = write_config(tmp_path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    source = {"type": "mqtt", "topic": "site/power", "username": "meter"}
    meter = {"id": "m1", "location_id": "site-1", "source": source}
    document["meters"] = [{**meter, "source": {**source, "password": "file:mqtt-password"}}]
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    loaded = config.load(path, {})
    settings = loaded.meters[0].source
    assert isinstance(settings, MqttSettings)
    mqtt = MqttMeter(Route.own("m1"), settings, password=loaded.meter_secrets["m1"])

    # A device that publishes its settings, password included: logged as a bad message.
    payload = b'{"broker": "127.0.0.1", "login": "meter/mqtt-broker-pw-42"}'
    mqtt._on_message("site/power", payload)

    assert output.event("meter.bad_message")["payload"].endswith(f'"meter/{REDACTED}"}}')
    assert "mqtt-broker-pw-42" not in output.text


@pytest.mark.parametrize("how", ["resolve_password", "config file:"])
def test_a_password_files_content_is_hidden_wherever_it_appears(
    output: Output, tmp_path: Path, how: str
) -> None:
    if how == "resolve_password":
        (tmp_path / "pw").write_text("pw-from-a-file-77\n", encoding="utf-8")
        assert resolve_password(tmp_path / "pw").reveal() == "pw-from-a-file-77"
    else:
        path = write_config(tmp_path)
        (tmp_path / "password").write_text("pw-from-a-file-77\n", encoding="utf-8")
        assert config.load(path, {}).connection.password.reveal() == "pw-from-a-file-77"
    log = logs.get_logger("flexbot.test")
    log.error("auth.failed", reason="the market said: user alice, pw-from-a-file-77, refused")
    try:
        fail(KeyError("pw-from-a-file-77"))  # a KeyError's message is the key's repr
    except KeyError:
        log.exception("strategy.failed")
    assert (
        output.event("auth.failed")["reason"] == f"the market said: user alice, {REDACTED}, refused"
    )
    assert output.event("strategy.failed")["exception"].endswith(f"KeyError: '{REDACTED}'")
    assert "pw-from-a-file-77" not in output.text


def test_a_crash_traceback_is_scrubbed(output: Output, capsys: pytest.CaptureFixture[str]) -> None:
    Secret("crash-secret-31415")
    try:
        fail(RuntimeError(f"crashed with crash-secret-31415 at {MARKET_URL}"))
    except RuntimeError as exc:
        sys.excepthook(RuntimeError, exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert f"RuntimeError: crashed with {REDACTED} at https://{REDACTED}@market.test" in err
    assert "crash-secret-31415" not in err


# --- what is held, and for how long ---------------------------------------------------------------


def test_tokens_are_held_bounded_and_the_passwords_stay() -> None:
    known = KnownSecrets(max_short_lived=4)
    known.add("the-market-password")
    for n in range(100):  # a long-running daemon's refreshes
        known.add(f"token-{n:04d}-abcdef", short_lived=True)
    assert len(known) == 5
    assert scrub("the-market-password token-0099-abcdef", known) == f"{REDACTED} {REDACTED}"
    assert scrub("token-0000-abcdef", known) == "token-0000-abcdef"  # long expired, let go


def test_a_short_value_is_not_held() -> None:
    known = KnownSecrets()
    known.add("pw")
    known.add("")
    known.add("dacted")  # part of `[redacted]`: it cannot be hidden by it
    assert len(known) == 0
    assert scrub("a pw in a line", known) == "a pw in a line"


def test_a_second_configuration_keeps_the_secrets_held(output: Output) -> None:
    """`flexbot run` reads the config (registering its secrets), then applies its `logging`."""
    Secret("held-before-the-reconfiguration")
    buffer = io.StringIO()
    logs.configure(json=False, stream=buffer)
    logs.get_logger("x").info("event", said="held-before-the-reconfiguration")
    assert "held-before-the-reconfiguration" not in buffer.getvalue()


def test_nothing_is_held_before_logging_is_configured() -> None:
    with logging_restored():
        structlog.reset_defaults()
        logs.remember_secret("no-pipeline-to-hide-it-from")  # a no-op, not an error
        assert logs.scrub("Bearer abc") == f"Bearer {REDACTED}"


# --- the patterns: what they hide, and what they leave alone --------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://u:p@h/x", f"https://{REDACTED}@h/x"),
        ("mqtt://:p@ss@h:1883", f"mqtt://{REDACTED}@h:1883"),
        ("GET /v1?token=abc&page=2", f"GET /v1?token={REDACTED}&page=2"),
        (
            "/x?sig=abc&key=k#access_token=t",
            f"/x?sig={REDACTED}&key={REDACTED}#access_token={REDACTED}",
        ),
        ("Authorization: Bearer abc.def", f"Authorization: Bearer {REDACTED}"),
        ('"Authorization": "Basic dXNlcjpw"', f'"Authorization": "Basic {REDACTED}"'),
        ('{"password":"x","api_key":5}', f'{{"password":"{REDACTED}","api_key":"{REDACTED}"}}'),
        ("{'client_secret': 'a b'}", f"{{'client_secret': '{REDACTED}'}}"),
        ("user: bob, password: hunter2", f"user: bob, password: {REDACTED}"),
        ("X-Api-Key: k1\nAccept: */*", f"X-Api-Key: {REDACTED}\nAccept: */*"),
        ("boom password=hunter2 again", f"boom password={REDACTED} again"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig", REDACTED),
        # left alone: prose, a JSONPath, code, keys that only start with a secret word
        ("no market password: give a password file", None),
        ("$.market.password: environment variable X is not set", None),
        ("token = await self._tokens.token()", None),
        ('{"token_type":"Bearer","tokens":3}', None),
        ("https://host/path@v2?page=2", None),
        # one rule after another: each sees the line as the one before left it
        ("https://token=abc1@h?password=x,y", f"https://{REDACTED}@h?password={REDACTED}"),
    ],
)
def test_the_patterns(text: str, expected: str | None) -> None:
    assert scrub(text) == (text if expected is None else expected)


# --- properties -----------------------------------------------------------------------------------

SECRET_PARAMS = [
    "token",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "API-Key",
    "key",
    "secret",
    "client_secret",
    "password",
    "pass",
    "pwd",
    "auth",
    "signature",
    "sig",
    "X-Amz-Signature",
    "jwt",
]
PLAIN_PARAMS = ["page", "limit", "q", "user", "id", "monkey", "keyboard", "tokens", "passage"]
URL_CHARS = st.characters(codec="ascii", categories=("L", "N"), include_characters="-._~!$'()*+,:%")
words = st.text(URL_CHARS, min_size=1, max_size=12)
URL_VALUE_CHARS = st.characters(
    codec="ascii", categories=("L", "N"), include_characters="-._~!$'()*+,:%=/?@"
)


@st.composite
def urls(draw: st.DrawFn, *, secrets: bool = True, legal: bool = False) -> tuple[str, str]:
    """A URL, and the URL as it should be shown. `secrets=False`: none in it. `legal`: only
    characters a URL holds unencoded (any others, e.g. a quote in a password, are %-encoded)."""
    scheme = draw(st.sampled_from(["http", "https", "wss", "mqtt", "redis"]))
    userinfo_chars = URL_VALUE_CHARS if legal else st.characters(exclude_characters="/?#")
    userinfo_text = st.text(userinfo_chars, max_size=16).filter(
        lambda s: "/" not in s and "?" not in s and not any(c.isspace() for c in s)
    )
    userinfo = draw(st.none() | userinfo_text) if secrets else None
    host = draw(st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z]{2,5}){0,2}", fullmatch=True))
    port = draw(st.none() | st.integers(1, 65535))
    path = "".join("/" + w for w in draw(st.lists(words, max_size=3)))
    names = st.sampled_from(SECRET_PARAMS + PLAIN_PARAMS if secrets else PLAIN_PARAMS)
    value_chars = URL_VALUE_CHARS if legal else st.characters(exclude_characters="&;#")
    params = draw(st.lists(st.tuples(names, st.text(value_chars, max_size=12)), max_size=4))
    fragment = draw(st.none() | words)

    def build(userinfo: str | None, shown: bool) -> str:
        authority = (f"{userinfo}@" if userinfo is not None else "") + host
        authority += f":{port}" if port is not None else ""
        hidden = [(n, REDACTED if shown and n in SECRET_PARAMS else v) for n, v in params]
        query = "?" + "&".join(f"{n}={v}" for n, v in hidden) if params else ""
        return f"{scheme}://{authority}{path}{query}" + (f"#{fragment}" if fragment else "")

    return build(userinfo, False), build(REDACTED if userinfo is not None else None, True)


@settings(max_examples=300, deadline=None)
@given(urls())
def test_redact_url_hides_userinfo_and_secret_parameters_and_keeps_the_rest(
    case: tuple[str, str],
) -> None:
    url, shown = case
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # and redacting again changes nothing


@settings(max_examples=300, deadline=None)
@given(urls(secrets=False))
def test_a_url_without_secrets_comes_back_unchanged(case: tuple[str, str]) -> None:
    url, _ = case
    assert redact_url(url) == url


@settings(max_examples=300, deadline=None)
@given(urls(legal=True))
def test_the_scrubber_hides_in_a_url_in_a_line_what_redact_url_hides(
    case: tuple[str, str],
) -> None:
    url, shown = case
    assert scrub(f"GET {url}") == f"GET {shown}"


secrets_ = st.text(min_size=6, max_size=24).filter(lambda s: s not in REDACTED)


@settings(max_examples=300, deadline=None)
@given(secret=secrets_, before=st.text(max_size=40), after=st.text(max_size=40))
def test_the_scrubber_never_leaves_a_registered_secret(
    secret: str, before: str, after: str
) -> None:
    known = KnownSecrets()
    known.add(secret)
    text = before + secret + after
    assert secret not in scrub(text, known)
    # In a JSON line: the line stays JSON, and the secret is in none of its strings.
    scrubber = logs.Scrubber(known, json=True)
    line = scrubber(None, "info", orjson.dumps({"event": text, "level": "info"}).decode())
    assert not any(secret in value for value in orjson.loads(line).values())


@settings(max_examples=300, deadline=None)
@given(
    token=st.text(st.sampled_from("abcXYZ019._~+/=-"), min_size=1, max_size=40),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_the_scrubber_never_leaves_a_bearer_token(token: str, before: str, after: str) -> None:
    scrubbed = scrub(f"{before}Bearer {token}{after}")
    assert f"Bearer {token}" not in scrubbed


def test_json_lines_stay_json_even_when_a_held_value_spans_their_syntax() -> None:
    known = KnownSecrets()
    known.add('1,"b":2')
    scrubber = logs.Scrubber(known, json=True)
    line = scrubber(None, "info", orjson.dumps({"a": 1, "b": 2}).decode())
    assert orjson.loads(line) == {"event": "log.scrubbed", "line": '{"a":[redacted]}'}
