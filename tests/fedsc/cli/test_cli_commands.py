"""A new ``fedsc`` command is one module (``add_parser``, ``command``) plus one
``COMMANDS.register`` line; the program parses, dispatches and reports its errors."""

from __future__ import annotations

import argparse
import types

import pytest

from fedsc.cli import main
from fedsc.cli.app import COMMANDS
from fedsc.errors import FedscInputError


def _toy_module() -> types.ModuleType:
    module = types.ModuleType("toy_command")

    def add_parser(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("toy", help="echo a word")
        p.add_argument("word")

    def command(args: argparse.Namespace) -> int:
        if args.word == "bad":
            raise FedscInputError("word 'bad' refused; pass another word.")
        print(f"toy: {args.word}")
        return 0

    module.add_parser, module.command = add_parser, command
    return module


@pytest.fixture
def toy():
    COMMANDS.register("toy", _toy_module())  # the one registry line
    yield
    COMMANDS.unregister("toy")


def test_a_registered_command_runs(toy, capsys):
    assert main(["toy", "hello"]) == 0
    assert capsys.readouterr().out == "toy: hello\n"
    assert main(["toy", "bad"]) == 2  # a user error: one line, exit 2
    assert "fedsc: error: word 'bad' refused" in capsys.readouterr().err


def test_every_command_module_has_the_two_functions():
    assert COMMANDS.names() == ["run", "demo", "party", "sweep", "compare", "report", "deploy"]
    for _, module in COMMANDS.items():
        assert callable(module.add_parser) and callable(module.command)


def test_demo_refuses_an_out_folder_with_another_studys_runs(tmp_path, capsys):
    """An --out reused across versions of the demo study: refused before anything runs
    (the report would pair an earlier version's seeds with today's), nothing deleted."""
    from fedsc.cli import main
    from fedsc.sweep import RunStore

    old = RunStore(tmp_path / "demo").write(
        {"run_id": "0123456789abcdef", "status": "failed", "config": {"method": "fedscgen"}}
    )
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "1 run(s) that are not part of this demo study" in err and "rm -r" in err
    assert old.exists()
