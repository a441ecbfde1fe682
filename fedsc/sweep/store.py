"""One file per finished run, written atomically; the results table is built from them.

A run's file is named after its config hash. It is written to a temporary file in the
same directory, flushed and fsynced, then renamed (``os.replace`` is atomic on POSIX),
so a sweep killed at any moment leaves either the whole file or none.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from fedsc.results import TIDY_COLUMNS


class RunStore:
    """``DIR/runs/<run_id>.json`` per run; ``DIR/results.parquet`` + ``.csv`` collected."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)

    def path(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.json"

    def finished(self) -> set[str]:
        """Run ids with a complete record (ok or failed)."""
        return {p.stem for p in self.runs.glob("*.json")}

    def write(self, record: dict[str, Any]) -> Path:
        """Atomically write one run's record."""
        target = self.path(record["run_id"])
        fd, tmp = tempfile.mkstemp(dir=self.runs, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def records(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.runs.glob("*.json")):
            with p.open() as fh:
                out.append(json.load(fh))
        return out

    def clean_temporary(self) -> int:
        """Remove leftovers of runs killed while writing; returns how many."""
        leftovers = list(self.runs.glob(".tmp-*"))
        for p in leftovers:
            p.unlink(missing_ok=True)
        return len(leftovers)

    def discard_failed(self) -> int:
        """Forget failed runs so the next sweep retries them."""
        n = 0
        for r in self.records():
            if r["status"] != "ok":
                self.path(r["run_id"]).unlink(missing_ok=True)
                n += 1
        return n

    def results(self) -> pd.DataFrame:
        """Tidy rows of every successful run."""
        frames = [pd.DataFrame(r["rows"]) for r in self.records() if r["status"] == "ok"]
        if not frames:
            return pd.DataFrame(columns=TIDY_COLUMNS)
        return pd.concat(frames, ignore_index=True)[TIDY_COLUMNS]

    def failures(self) -> pd.DataFrame:
        rows = [
            {"run_id": r["run_id"], "variant": r["config"].get("variant"), "error": r["error"]}
            for r in self.records()
            if r["status"] != "ok"
        ]
        return pd.DataFrame(rows, columns=["run_id", "variant", "error"])

    def write_tables(self) -> pd.DataFrame:
        """Write ``results.parquet`` and ``results.csv`` from the run files."""
        table = self.results()
        table.to_parquet(self.root / "results.parquet", index=False)
        table.to_csv(self.root / "results.csv", index=False)
        return table
