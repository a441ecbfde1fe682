"""One file per finished run, written atomically; the results table is built from them.

A run's file is named after its config hash. It is written to a temporary file in the
same directory (``.tmp-<pid>-<random>.part``), flushed and fsynced, then renamed
(``os.replace`` is atomic on POSIX), so a sweep killed at any moment leaves either the
whole file or none. A run file that cannot be read back (truncated by a full disk, edited
by hand) is *corrupt*: a sweep moves it aside (``<run_id>.json.corrupt-<UTC time>``) with
a warning and runs it again; readers (:meth:`RunStore.records`, ``fedsc compare`` /
``report``) skip it with a warning naming the file.

One sweep at a time may write a store: :meth:`RunStore.lock` takes an exclusive
``fcntl.flock`` on ``DIR/.lock`` and a second sweep on the same folder fails at once
with :class:`~fedsc.errors.StoreLockedError` (it does not wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from fedsc.errors import FedscInputError, StoreLockedError
from fedsc.results import TIDY_COLUMNS

logger = logging.getLogger(__name__)

_TMP = re.compile(r"^\.tmp-(?:(\d+)-)?")


class RunStore:
    """``DIR/runs/<run_id>.json`` per run; ``DIR/results.parquet`` + ``.csv`` collected."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        if self.root.exists() and not self.root.is_dir():
            raise FedscInputError(
                f"sweep folder {self.root} exists and is not a folder; choose another --out."
            )
        if create:
            try:
                self.runs.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FedscInputError(
                    f"cannot create the sweep folder {self.runs}: {exc.strerror or exc}; "
                    "choose a writable --out."
                ) from None
            if not os.access(self.runs, os.W_OK | os.X_OK):
                raise FedscInputError(
                    f"cannot write in the sweep folder {self.runs} (permission denied); "
                    "choose a writable --out."
                )

    def path(self, run_id: str) -> Path:
        """The file of run ``run_id``."""
        return self.runs / f"{run_id}.json"

    # ------------------------------------------------------------------ reading
    def scan(self) -> tuple[list[dict[str, Any]], list[Path]]:
        """(valid records, corrupt run files), in file-name order."""
        good, bad = [], []
        for p in sorted(self.runs.glob("*.json")) if self.runs.is_dir() else []:
            record = _read_record(p)
            (bad.append(p) if record is None else good.append(record))
        return good, bad

    def corrupt(self) -> list[Path]:
        """Run files that cannot be read back as a complete record."""
        return self.scan()[1]

    def finished(self) -> set[str]:
        """Run ids with a complete record (ok or failed); corrupt files do not count."""
        return {r["run_id"] for r in self.scan()[0]}

    def records(self) -> list[dict[str, Any]]:
        """Every complete record; corrupt run files are skipped with a warning."""
        good, bad = self.scan()
        if bad:
            warn_corrupt(bad, self.root)
        return good

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store for one sweep; a second sweep fails fast (no waiting)."""
        path = self.root / ".lock"
        fh = path.open("a+")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise StoreLockedError(
                    f"sweep folder {self.root} is in use by another sweep ({holder}); wait "
                    "for it to finish, or use another --out. Two sweeps on one folder would "
                    "execute the same runs."
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            fh.flush()
            yield
        finally:
            fh.close()  # releases the lock

    def write(self, record: dict[str, Any]) -> Path:
        """Atomically write one run's record."""
        target = self.path(record["run_id"])
        fd, tmp = tempfile.mkstemp(dir=self.runs, prefix=f".tmp-{os.getpid()}-", suffix=".part")
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

    def clean_temporary(self) -> int:
        """Remove leftovers of this process or of dead ones; returns how many.

        A temporary file names its writer's pid; files of a live process are kept (call
        this holding :meth:`lock`, so no other sweep writes here).
        """
        n = 0
        for p in self.runs.glob(".tmp-*"):
            m = _TMP.match(p.name)
            pid = int(m.group(1)) if m and m.group(1) else None
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue
            p.unlink(missing_ok=True)
            n += 1
        return n

    def quarantine(self) -> list[Path]:
        """Move corrupt run files aside (``.json.corrupt-<time>``) so they run again."""
        moved = []
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for p in self.corrupt():
            target = p.with_name(f"{p.name}.corrupt-{stamp}")
            os.replace(p, target)
            moved.append(target)
        if moved:
            logger.warning(
                "quarantined %d corrupt run file(s) (unreadable or incomplete JSON); they "
                "run again: %s",
                len(moved),
                ", ".join(str(m) for m in moved),
            )
        return moved

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
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=TIDY_COLUMNS)
        return pd.concat(frames, ignore_index=True)[TIDY_COLUMNS]

    def failures(self) -> pd.DataFrame:
        """run_id, variant and error of every failed run."""
        rows = [
            {"run_id": r["run_id"], "variant": r["config"].get("variant"), "error": r["error"]}
            for r in self.records()
            if r["status"] != "ok"
        ]
        return pd.DataFrame(rows, columns=["run_id", "variant", "error"])

    def write_tables(self) -> pd.DataFrame:
        """Write ``results.parquet`` and ``results.csv`` from the run files (atomically)."""
        table = self.results()
        for name, write in (
            ("results.parquet", lambda p: table.to_parquet(p, index=False)),
            ("results.csv", lambda p: table.to_csv(p, index=False)),
        ):
            tmp = self.root / f".{name}.tmp-{os.getpid()}"
            write(tmp)
            os.replace(tmp, self.root / name)
        return table


def warn_corrupt(paths: list[Path], root: Path) -> None:
    """Log one warning naming corrupt run files and the fix."""
    logger.warning(
        "%d corrupt run file(s) in %s skipped (unreadable or incomplete): %s; rerun "
        "`fedsc sweep STUDY --out %s` to quarantine and re-run them.",
        len(paths),
        root,
        ", ".join(p.name for p in paths),
        root,
    )


def _read_record(path: Path) -> dict[str, Any] | None:
    """A complete record, or None (truncated, not JSON, missing fields, wrong id)."""
    try:
        with path.open() as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("run_id") != path.stem:
        return None
    status = record.get("status")
    if status == "ok":
        return record if isinstance(record.get("rows"), list) else None
    if status == "failed":
        return record if isinstance(record.get("config"), dict) else None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
