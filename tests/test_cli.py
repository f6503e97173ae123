"""The command line loads only the subcommand it runs: each still parses as before."""

from __future__ import annotations

import pytest

from flexbot import cli


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--config", "x.yaml"], "run"),
        (["--log-format", "json", "run"], "run"),
        (["--log-format", "console", "status", "--config", "run"], "status"),
        (["check-config", "--config", "demo"], "check-config"),
        (["kill-switch", "status"], "kill-switch"),
        (["kill-switch", "engage", "--config", "status"], "kill-switch"),
        (["orders", "list"], "orders"),
        (["sandbox", "--port", "0"], "sandbox"),
    ],
)
def test_each_command_parses_with_only_its_module(argv: list[str], command: str) -> None:
    args = cli.build_parser(argv).parse_args(argv)
    assert args.command == command


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser(["-h", "run"]).parse_args(["-h", "run"])
    shown = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in shown


def test_an_unknown_command_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser(["nope"]).parse_args(["nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
