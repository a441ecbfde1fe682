"""The record stage: a run's folder (``corrected.h5ad``, ``metrics.csv``, ``run.json``).

:func:`check_output_dir` refuses an unusable ``--out`` before any computation;
:func:`write_run` writes the run atomically; :func:`format_metrics` is the table the CLI
prints.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsc.errors import FedscOutputError
from fedsc.run.outcome import RunResult

__all__ = ["RUN_FILES", "check_output_dir", "format_metrics", "write_run"]


def format_metrics(rows: pd.DataFrame, info: dict[str, Any] | None = None) -> str:
    """The metric table the CLI prints: every metric row, missing values shown as such.

    Unlike a plain ``pivot_table`` (which drops all-NaN rows), a metric that is missing
    stays in the table as ``missing``; the reasons (from ``info["missing_metrics"]``) and
    the run's warnings follow the table.
    """
    methods = list(dict.fromkeys(rows["method"]))
    metrics = list(dict.fromkeys(rows["metric"]))
    table = rows.pivot_table(
        index="metric", columns="method", values="value", sort=False, dropna=False
    ).reindex(index=metrics, columns=methods)
    shown = table.map(lambda v: "missing" if not np.isfinite(v) else f"{v:.4f}")
    lines = [shown.to_string()]
    info = info or {}
    for m in info.get("missing_metrics", []):
        lines.append(f"missing: {m['method']} {m['panel']}/{m['metric']}: {m['reason']}")
    for w in info.get("warnings", []):
        if not w.startswith(f"{len(info.get('missing_metrics', []))} metric(s)"):
            lines.append(f"warning: {w}")
    return "\n".join(lines)


#: Files of one run's output folder.
RUN_FILES = ("corrected.h5ad", "metrics.csv", "run.json")


def check_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Check before any computation that a run can be written to ``out_dir``.

    ``out_dir`` must be a folder (or not exist yet) whose parent can be created and
    written; an earlier run there (any of :data:`RUN_FILES`) is refused unless
    ``overwrite``; a folder holding other files is refused (a run replaces its folder).
    Raises :class:`~fedsc.errors.FedscOutputError` naming the problem and the fix.
    """
    out = Path(out_dir)
    if str(out_dir) == "":
        raise FedscOutputError("--out is empty; name a folder for the run's outputs.")
    if out.exists() and not out.is_dir():
        raise FedscOutputError(
            f"--out {out} exists and is not a folder; name a new folder for the run's outputs."
        )
    if out.is_dir():
        contents = sorted(p.name for p in out.iterdir())
        earlier = [n for n in contents if n in RUN_FILES]
        if earlier and not overwrite:
            raise FedscOutputError(
                f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite "
                "to replace it, or choose another folder."
            )
        others = [n for n in contents if n not in RUN_FILES]
        if others:
            raise FedscOutputError(
                f"--out {out} is a folder holding other files ({', '.join(others[:5])}); "
                "a run writes into its own folder: choose a new or empty one."
            )
    parent = _existing_ancestor(out.absolute().parent)
    if not parent.is_dir():
        raise FedscOutputError(
            f"--out {out}: {parent} is a file, not a folder; choose another location."
        )
    try:  # a real probe: os.access says yes to root on read-only or virtual file systems
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".fedsc-probe-{os.getpid()}-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FedscOutputError(
            f"--out {out}: cannot write in {parent} ({exc.strerror or exc}); choose a "
            "writable location."
        ) from None
    return out


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_run(result: RunResult, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``corrected.h5ad``, ``metrics.csv`` and ``run.json`` into ``out_dir``, atomically.

    The files are written into a temporary sibling folder (``.<name>.tmp-<pid>``),
    fsynced, then renamed to ``out_dir``, so a crash never leaves half a run. An earlier
    run in ``out_dir`` is refused unless ``overwrite``; then it is replaced only after the
    new run is complete (and removed once the new one is in place).
    """
    out = check_output_dir(out_dir, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover (same pid) only
    try:
        tmp.mkdir()
        result.adata.write_h5ad(tmp / "corrected.h5ad")
        result.rows.to_csv(tmp / "metrics.csv", index=False)
        (tmp / "run.json").write_text(json.dumps(result.info, indent=2, default=_json_default))
        for name in RUN_FILES:
            _fsync(tmp / name)
        _fsync(tmp)
        if out.exists():
            out.rename(old)  # the earlier run stays whole until the new one is complete
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        _fsync(out.parent)
    except OSError as exc:
        raise FedscOutputError(f"could not write the run to {out}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
