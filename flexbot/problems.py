"""Located problems: what is wrong with an input, and where.

Every boundary (wire JSON, market rules, YAML config) reports bad input the same way, as a list of
`Problem`s whose `loc` is a path into the document. `str(problem)` is the message a user reads:
``$.delivery_start: must be on the 15-minute grid``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

Loc = tuple[str | int, ...]


def render_loc(loc: Loc) -> str:
    """`("a", 0, "b")` → `$.a[0].b`, the JSONPath-like form used in every message."""
    out = ["$"]
    for part in loc:
        out.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(out)


@attrs.frozen
class Problem:
    loc: Loc
    msg: str
    # A short machine-readable kind, as in FastAPI's error bodies (`missing`, `value_error`, …).
    type: str = "value_error"

    def __str__(self) -> str:
        return f"{render_loc(self.loc)}: {self.msg}"

    def under(self, prefix: Loc) -> Problem:
        return attrs.evolve(self, loc=prefix + self.loc)


class Invalid(ValueError):
    """Input that breaks a rule; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid input")

    @classmethod
    def single(cls, loc: Loc, msg: str, type: str = "value_error") -> Invalid:
        return cls([Problem(loc, msg, type)])


def raise_if_any(problems: Iterable[Problem]) -> None:
    found = list(problems)
    if found:
        raise Invalid(found)


def http_url_problem(value: object) -> str | None:
    """What is wrong with an http(s) URL that flexbot will request (None: nothing): a scheme, a
    host, a port in range, no blanks. The message never repeats the URL: it may hold credentials.
    """
    import httpx  # only where a URL is checked: a config load, not every import of this module

    expected = "expected http://host[:port][/path] or https://…"
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return f"{expected} (no blanks)"
    try:
        url = httpx.URL(value)
        scheme, host, port = url.scheme, url.host, url.port
    except (httpx.InvalidURL, ValueError):
        # Never the parser's words: they may quote a part of the URL (a password read as a port).
        # ValueError: a host IDNA refuses (`xn--…`), raised only when the host is read.
        return f"not a usable URL: {expected}"
    if scheme not in ("http", "https") or not host:
        return expected
    if port is not None and not 0 < port < 65536:
        return f"port {port} is out of range: {expected}"
    return None
