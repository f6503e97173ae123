"""The files of a recording: the live one, and the rotated ones before it.

The live file (`events.jsonl`) is written until it holds `max_bytes`; it is then renamed
`events.<stamp>.jsonl` (quick, so the writer goes on at once with a new live file), compressed in
the background to `events.<stamp>.jsonl.gz` (written as `….jsonl.gz.tmp` and renamed when whole),
and the oldest rotated files beyond `keep` are deleted. The stamp is the UTC time of the rotation,
fixed width (`20261123T100000.000000Z`), so the names sort as the rotations happened; a new stamp
is always later than every stamp on disk (a clock that stepped back gets the newest + 1 µs), so
the order of the names is the order of the contents even then.

A crash between the steps loses nothing and keeps nothing twice: an uncompressed rotated file is
compressed at the next tidy, a `.tmp` (a compression cut short) is deleted and made again, and an
uncompressed file whose `.gz` is already whole is deleted.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from attrs import field, frozen

SUFFIX = ".jsonl"
COMPRESSED = ".jsonl.gz"
PARTIAL = ".jsonl.gz.tmp"
_STAMP = r"(\d{8}T\d{6}\.\d{6}Z)"
_ONE_US = timedelta(microseconds=1)


@frozen(order=True)
class Rotated:
    """A rotated file: its time, and whether it is compressed yet."""

    at: datetime
    compressed: bool
    path: Path = field(order=False)


@frozen
class Tidied:
    """What one tidy did, for the writer to log."""

    compressed: tuple[tuple[Path, int, int], ...] = ()  # (.gz, bytes before, bytes after)
    deleted: tuple[Path, ...] = ()
    failed: tuple[tuple[Path, str], ...] = ()  # (file, why): tried again at the next tidy


def base_name(live: Path) -> str:
    """`events.jsonl` → `events` (a name without `.jsonl` is kept whole)."""
    name = live.name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and name != SUFFIX else name


def stamp(at: datetime) -> str:
    """Fixed width, whatever the year, so that names sort as times."""
    at = at.astimezone(UTC)
    return (
        f"{at.year:04d}{at.month:02d}{at.day:02d}T{at.hour:02d}{at.minute:02d}{at.second:02d}"
        f".{at.microsecond:06d}Z"
    )


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def rotated_path(live: Path, at: datetime, *, compressed: bool) -> Path:
    return live.with_name(f"{base_name(live)}.{stamp(at)}{COMPRESSED if compressed else SUFFIX}")


def _pattern(live: Path, ending: str) -> re.Pattern[str]:
    return re.compile(re.escape(base_name(live)) + r"\." + _STAMP + ending)


def parse(live: Path, name: str) -> Rotated | None:
    """The rotated file `name` names, or None if it is not one of `live`'s."""
    for ending, compressed in ((re.escape(COMPRESSED), True), (re.escape(SUFFIX), False)):
        found = _pattern(live, ending).fullmatch(name)
        if found is not None:
            try:
                at = parse_stamp(found[1])
            except ValueError:  # digits of no date (month 13)
                return None
            return Rotated(at, compressed, live.with_name(name))
    return None


def rotated(live: Path, names: Iterable[str]) -> list[Rotated]:
    """`live`'s rotated files among `names`, oldest first (for a time both forms may exist:
    the uncompressed one sorts first)."""
    return sorted(r for r in (parse(live, n) for n in names) if r is not None)


def listing(live: Path) -> list[Rotated]:
    """The rotated files on disk, oldest first."""
    return rotated(live, (p.name for p in live.parent.iterdir()))


def next_stamp(at: datetime, existing: Sequence[Rotated]) -> datetime:
    """`at`, unless a rotated file is as new or newer: then just after the newest."""
    at = at.astimezone(UTC)
    if existing:
        newest = max(r.at for r in existing)
        if at <= newest:
            return newest + _ONE_US
    return at


def to_delete(files: Sequence[Rotated], keep: int) -> list[Rotated]:
    """All but the newest `keep` rotations (a rotation in both forms counts once)."""
    times = sorted({r.at for r in files})
    gone = set(times[: max(len(times) - keep, 0)])
    return [r for r in sorted(files) if r.at in gone]


def rotate(live: Path, at: datetime) -> Path:
    """Rename the (closed) live file to its rotated, uncompressed name; returns that name."""
    target = rotated_path(live, next_stamp(at, listing(live)), compressed=False)
    live.rename(target)
    return target


def compress(pending: Path) -> tuple[Path, int, int]:
    """`x.jsonl` → `x.jsonl.gz` (whole or not at all), then `x.jsonl` deleted."""
    target = pending.with_name(pending.name + ".gz")
    partial = pending.with_name(pending.name + ".gz.tmp")
    with pending.open("rb") as source, gzip.open(partial, "wb", compresslevel=6) as sink:
        shutil.copyfileobj(source, sink, 1024 * 1024)
    size = pending.stat().st_size
    partial.rename(target)
    pending.unlink()
    return target, size, target.stat().st_size


def tidy(live: Path, keep: int) -> Tidied:
    """Compress what was rotated, delete what is beyond `keep`: for a worker thread, one at a
    time (a `.tmp` found here is a compression cut short, never one still running)."""
    compressed: list[tuple[Path, int, int]] = []
    deleted: list[Path] = []
    failed: list[tuple[Path, str]] = []
    cut_short = _pattern(live, re.escape(PARTIAL))
    for stale in [p for p in live.parent.iterdir() if cut_short.fullmatch(p.name)]:
        _unlink(stale, failed)
    files = listing(live)
    whole = {r.at for r in files if r.compressed}
    for pending in (r for r in files if not r.compressed):
        if pending.at in whole:  # compressed before a crash, not yet deleted
            _unlink(pending.path, failed)
            continue
        try:
            compressed.append(compress(pending.path))
        except OSError as exc:
            failed.append((pending.path, str(exc)))
            _unlink(pending.path.with_name(pending.path.name + ".gz.tmp"), [])
    for old in to_delete(listing(live), keep):
        if _unlink(old.path, failed):
            deleted.append(old.path)
    return Tidied(tuple(compressed), tuple(deleted), tuple(failed))


def _unlink(path: Path, failed: list[tuple[Path, str]]) -> bool:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        failed.append((path, str(exc)))
        return False
    return True
