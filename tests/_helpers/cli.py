"""``fedsc`` command lines run in-process: exit code and output, never a traceback."""

from __future__ import annotations

from typing import Any

from fedsc.cli import main


def run_cli_output(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``main(argv)``'s exit code (argparse exits included), its stdout and its stderr;
    fails the test if stderr holds a traceback."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def run_cli(capsys: Any, *argv: str) -> tuple[int, str]:
    """``main(argv)``'s exit code and its stderr (see :func:`run_cli_output`)."""
    code, _, err = run_cli_output(capsys, *argv)
    return code, err
