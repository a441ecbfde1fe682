"""Checks shared by the issue-23 robustness tests (imported by name: no package here).

Each case asserts the exit code or exception type, that the message names the problem
and the fix, that nothing was written, and that no process or temporary file is left
(the ``nothing_left`` fixture in conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fedsc.cli import main

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


def run_cli(capsys: Any, *argv: str) -> tuple[int, str]:
    """``main(argv)``'s exit code (argparse exits included) and its stderr, no traceback."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def has_words(message: str, words: list[str]) -> None:
    """Every word (problem and fix) appears in ``message``."""
    for word in words:
        assert word in message, f"{word!r} not in message: {message}"


def children(pid: int) -> set[int]:
    """Live descendants of ``pid`` (from /proc; zombies excluded)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z":
            parents[int(entry.name)] = int(stat[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= kids
        frontier = kids
    return out


def folder_hash(path: Path) -> str:
    """Names and bytes of every file under ``path`` (to show nothing changed)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def adata_digest(adata: Any) -> str:
    """X, layers, obsm, obs and the uns keys of an AnnData (to show it was not changed)."""
    import numpy as np
    import scipy.sparse as sp

    h = hashlib.sha256()

    def add(m: Any) -> None:
        if sp.issparse(m):
            for part in (m.data, m.indices, m.indptr):
                h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(np.ascontiguousarray(np.asarray(m)).tobytes())

    add(adata.X)
    for store in (adata.layers, adata.obsm):
        for key in sorted(store):
            h.update(key.encode())
            add(store[key])
    h.update(adata.obs.to_csv().encode())
    h.update(repr(sorted(adata.uns)).encode())
    return h.hexdigest()
