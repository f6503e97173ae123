"""argparse `type=` converters with messages that say what is wrong with the value."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def number(cast: Callable[[str], N], *, minimum: N, inclusive: bool) -> Callable[[str], N]:
    kind = "a whole number" if cast is int else "a number"
    bound = "must not be negative" if inclusive else "must be greater than 0"
    if minimum != 0:
        bound = f"must be at least {minimum}" if inclusive else f"must be greater than {minimum}"

    def convert(text: str) -> N:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if value != value or not (value >= minimum if inclusive else value > minimum):  # NaN
            raise argparse.ArgumentTypeError(f"{text!r} {bound}")
        return value

    return convert


positive_int = number(int, minimum=0, inclusive=False)
positive_float = number(float, minimum=0.0, inclusive=False)
non_negative_int = number(int, minimum=0, inclusive=True)
non_negative_float = number(float, minimum=0.0, inclusive=True)
