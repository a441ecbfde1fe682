"""Checks shared by the issue-23 robustness tests (imported by name: no package here).

Each case asserts the exit code or exception type, that the message names the problem
and the fix, that nothing was written, and that no process or temporary file is left
(the ``nothing_left`` fixture in conftest.py). Helpers that other test folders use too
(running the CLI, folder and AnnData digests, process checks) are in tests/_helpers/.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: Set to a file path to collect every case's message (the closing note's table):
#: FEDSC_CASES_OUT=/tmp/cases.jsonl pytest tests/robustness/...
CASES_OUT = os.environ.get("FEDSC_CASES_OUT")


def record(area: str, case: str, given: str, outcome: Any, message: str) -> None:
    """Append one case to ``$FEDSC_CASES_OUT`` (no-op when unset)."""
    if not CASES_OUT:
        return
    if message.startswith("usage:"):  # argparse: the error is the last line
        message = message.strip().splitlines()[-1]
    row = {"area": area, "case": case, "input": given, "outcome": str(outcome), "message": message}
    with open(CASES_OUT, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def has_words(message: str, words: list[str]) -> None:
    """Every word (problem and fix) appears in ``message``."""
    for word in words:
        assert word in message, f"{word!r} not in message: {message}"
