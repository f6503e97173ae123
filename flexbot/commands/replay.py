"""`flexbot replay FILE --strategy config/strategies/x.yaml`: a backtest over a recording."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from flexbot import config
from flexbot.commands import add_log_format
from flexbot.engine.replay import load_recording, replay
from flexbot.problems import Invalid


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay", help="run a strategy over a recording of market events (a backtest)"
    )
    parser.add_argument(
        "recording",
        type=Path,
        help="a recording (engine.record), plain JSONL or a rotated .jsonl.gz",
    )
    parser.add_argument("--strategy", type=Path, required=True, help="a strategy's YAML file")
    parser.add_argument(
        "--code-dir",
        type=Path,
        default=Path("strategies"),
        help="where the strategy's module lives (default: strategies)",
    )
    add_log_format(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = config.read_strategy(args.strategy, args.code_dir)
    except config.ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    try:
        events = load_recording(args.recording)
        report = trio.run(replay, spec, events)
    except Invalid as exc:
        print(f"flexbot replay: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 0
