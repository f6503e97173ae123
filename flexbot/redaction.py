"""Secrets out of text: a URL made fit to show, and any line scrubbed before it is written.

Two kinds of knowledge, used together by `flexbot.logs` on every rendered line:

- *Patterns*, for secrets flexbot cannot know in advance: the userinfo of a URL
  (`https://user:pass@host`), a secret query parameter (`?api_key=…`, `&sig=…`), a Bearer
  credential, a JWT, and a value given to a key that names a secret (`password=…`,
  `"client_secret": "…"`, `X-Api-Key: …`, for any key ending in password, secret, token, api_key,
  signature, …).
- *Values*, for the secrets this process holds (its market password, a meter's password, the tokens
  it was issued): a `KnownSecrets` replaces each wherever it appears, whatever surrounds it, in the
  forms it takes in a JSON line, a repr or a URL.

Only a value is hidden, never what names it (`password=[redacted]`), so a line still says what went
wrong. The patterns err towards hiding: `key: value` prose is left alone only where it cannot be a
dump of settings (after a word, as in "no market password: give a file"; in a JSONPath such as
`$.market.password: …`), and a `key = value` with spaces (code, in a traceback) is left alone.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote_plus

import orjson

REDACTED = "[redacted]"

# A key naming a secret ends in one of these words: `password`, `db_password`, `X-Api-Key`,
# `client_secret`, `refresh_token`, `Set-Cookie`. (`token_type` does not: it ends in `type`.)
_SECRET_WORD = (
    r"(?:passw(?:or)?d|passphrase|pwd|secret[_-]?key|secret|token|api[_-]?key|apikey"
    r"|private[_-]?key|access[_-]?key|signature|authorization|cookie)"
)
_SECRET_KEY = re.compile(rf"[\w-]*{_SECRET_WORD}", re.IGNORECASE)
# In a query string (or a URL fragment), short names are secrets too: `?key=`, `&sig=`.
_PARAM_NAME = rf"(?:[\w.-]{{0,40}}?{_SECRET_WORD}|key|sig|pass|auth|jwt)"
_SECRET_PARAM = re.compile(_PARAM_NAME, re.IGNORECASE)

# The patterns match the lower-cased text (an IGNORECASE scan costs ten times as much), and each
# runs only if one of its trigger strings is in it: most lines hold none, and skip every scan. The
# span of the group `secret` is replaced; a value never takes a " or a backslash, so a JSON line
# stays JSON (a JSON-escaped `\"` ends a value) and a quoted value keeps its closing quote.
_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    # the userinfo of a URL, up to its last @ (a password may hold an @ of its own, and a ' that
    # URLs keep unencoded: better a repr's closing quote hidden with it than a password shown)
    (("://",), re.compile(r"://(?P<secret>[^\s/?#\"\\<>]*)@")),
    (("bearer",), re.compile(r"bearer\s+(?P<secret>[a-z0-9._~+/=-]+)")),
    (("eyj",), re.compile(r"\b(?P<secret>eyj[a-z0-9_-]{8,}\.[a-z0-9_-]{8,}\.[a-z0-9_-]*)")),
    # a query parameter: its value is all up to the next parameter (a comma and a ' included)
    (
        ("key", "sig", "pass", "auth", "jwt=", "pwd", "secret", "token", "cookie"),
        re.compile(rf"[?&;#]{_PARAM_NAME}=(?P<secret>[^\s&#;\"\\<>]*)"),
    ),
    # password=…, "password": …, password: … (an auth scheme before the value is kept)
    (
        ("pass", "pwd", "secret", "token", "key", "sig", "auth", "cookie"),
        re.compile(
            rf"{_SECRET_WORD}(?:=|(?P<kq>\\?[\"'])\s*[:=]\s*|(?P<colon>\s*:\s*))"
            r"(?P<vq>\\?[\"'])?(?:(?:basic|bearer|digest|token)\s+)?"
            # quoted: up to the quote; after a JSON key: a literal; else: up to a space or mark
            r"(?P<secret>(?(vq)[^\"'\\\r\n]*|(?(kq)[a-z0-9.+-]+|[^\s\"'\\&,;<>]+)))"
        ),
    ),
)
# Any of these is in a line a rule may change (each trigger once: "key" for "key" and "key=").
_GATE = tuple(dict.fromkeys(trigger for triggers, _ in _RULES for trigger in triggers))
# Where `key: value` is a dump of settings or headers, not prose ("no market password: give a
# file") nor a JSONPath (`$.market.password: …`): at the start of the text or of a line, or after
# an opening or separating mark.
_DUMP_MARKS = "\n{([,;|'\""


@lru_cache(maxsize=1024)
def is_secret_key(name: str) -> bool:
    """Whether a key (of a log event, a dict, a form) names a secret: its value is never shown."""
    return _SECRET_KEY.fullmatch(name) is not None


def scrub_patterns(text: str) -> str:
    """`text` with every secret the patterns recognise replaced by `[redacted]`."""
    low = _lower(text)
    for trigger in _GATE:
        if trigger in low:
            break
    else:
        return text
    for triggers, pattern in _RULES:
        if any(trigger in low for trigger in triggers):
            changed = _substitute(pattern, text, low)
            if changed is not text:
                text, low = changed, _lower(changed)
    return text


def _lower(text: str) -> str:
    """`text` in lower case, each character where it was (a match's span is the original's)."""
    low = text.lower()
    if len(low) != len(text):  # a letter whose lower case is two (İ): left as it is
        low = "".join(c if len(c.lower()) > 1 else c.lower() for c in text)
    return low


def _substitute(pattern: re.Pattern[str], text: str, low: str) -> str:
    """`text` with the `secret` span of each match of `pattern` in `low` hidden; `text` itself
    if there is none."""
    out: list[str] = []
    done = pos = 0
    while (match := pattern.search(low, pos)) is not None:
        start, end = match.span("secret")
        if text.startswith(REDACTED, start):  # hidden by a rule before; what follows is not
            pos = start + len(REDACTED)
            continue
        found = match.groupdict()
        if found.get("colon") is not None and not _is_dump(text, match.start()):
            pos = start  # prose ("no password: give one"): its value may still hold a secret
            continue
        # A bare JSON value (a number, true, null) is hidden by a string, so JSON stays JSON.
        bare_json = found.get("kq") == '"' and found.get("vq") is None
        out += [text[done:start], f'"{REDACTED}"' if bare_json else REDACTED]
        done, pos = end, max(end, match.start() + 1)
    return "".join([*out, text[done:]]) if out else text


def _is_dump(text: str, word_at: int) -> bool:
    """Whether the key whose secret word is at `word_at` starts where a dump puts a key."""
    start = word_at
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-"):
        start -= 1
    before = text[max(0, start - 2) : start]
    return (
        not before
        or before[-1] in _DUMP_MARKS
        or before == "\\n"
        or (before[-1] == " " and len(before) == 2 and before[0] in "{([,;")
    )


def redact_url(url: str) -> str:
    """`url` fit to show: its userinfo and the values of its secret parameters `[redacted]`.

    `https://bob:pw@host:8443/p?api_key=k&page=2` → `https://[redacted]@host:8443/p?api_key=[redacted]&page=2`.
    Anything else is kept as written, so a URL without secrets comes back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    else:
        end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        authority, rest = rest[:end], rest[end:]
        if "@" in authority:
            authority = REDACTED + "@" + authority.rpartition("@")[2]
        rest = authority + rest
    body, hash_, fragment = rest.partition("#")
    path, question, query = body.partition("?")
    return scheme + sep + path + question + _redact_params(query) + hash_ + _redact_params(fragment)


def _redact_params(params: str) -> str:
    if "=" not in params:
        return params
    parts = re.split(r"([&;])", params)
    for index in range(0, len(parts), 2):
        name, eq, _ = parts[index].partition("=")
        if eq and _SECRET_PARAM.fullmatch(unquote_plus(name)):
            parts[index] = name + "=" + REDACTED
    return "".join(parts)


class KnownSecrets:
    """The secret values this process holds, replaced wherever they appear in a line.

    Bounded: of lasting values (passwords) it keeps the latest `max_lasting`, of `short_lived`
    ones (tokens, replaced on every refresh: 8 is the latest 4 grants) the latest
    `max_short_lived`, so the set does not grow with a daemon's uptime. A value shorter than
    `min_chars` is not held: hiding every occurrence of a short string would garble every line,
    and the patterns still hide it where it is named.

    Safe to share between threads: adding copies, reading sees one consistent tuple.
    """

    def __init__(
        self, *, max_lasting: int = 32, max_short_lived: int = 8, min_chars: int = 6
    ) -> None:
        self.max_lasting = max_lasting
        self.max_short_lived = max_short_lived
        self.min_chars = min_chars
        self._lasting: OrderedDict[str, None] = OrderedDict()
        self._short_lived: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.forms: tuple[str, ...] = ()  # every form of every value, longest first

    def add(self, value: str, *, short_lived: bool = False) -> None:
        if len(value) < self.min_chars or value in REDACTED:
            return  # (a part of the word `[redacted]` cannot be hidden by it)
        with self._lock:
            held, limit = (
                (self._short_lived, self.max_short_lived)
                if short_lived
                else (self._lasting, self.max_lasting)
            )
            held[value] = None
            held.move_to_end(value)
            while len(held) > limit:
                held.popitem(last=False)
            forms = {f for v in (*self._lasting, *self._short_lived) for f in _forms(v)}
            self.forms = tuple(
                sorted((f for f in forms if len(f) >= self.min_chars), key=len, reverse=True)
            )

    def __len__(self) -> int:
        return len(self._lasting) + len(self._short_lived)

    def replace(self, text: str) -> str:
        """`text` with every held value replaced by `[redacted]` (again, should a replacement
        and its neighbours happen to spell a value anew)."""
        forms = self.forms
        for _ in range(8):
            found = [form for form in forms if form in text]
            if not found:
                return text
            for form in found:
                text = text.replace(form, REDACTED)
        return REDACTED  # never reached but by a contrived value: show nothing rather than it


def _forms(value: str) -> set[str]:
    """How `value` can appear in a line: as is, JSON-escaped, in a repr, URL- or form-encoded."""
    forms = {value, quote(value, safe=""), quote_plus(value, safe="")}
    for form in (value, repr(value)[1:-1]):
        forms.add(form)
        forms.add(orjson.dumps(form).decode()[1:-1])
    return forms


def scrub(text: str, known: KnownSecrets | None = None) -> str:
    """`text` with the values in `known` and every secret the patterns recognise hidden."""
    if known is not None:
        text = known.replace(text)
    scrubbed = scrub_patterns(text)
    if known is not None and scrubbed != text:
        # A replacement and its neighbours could (for a contrived value) spell a value anew.
        scrubbed = known.replace(scrubbed)
    return scrubbed
