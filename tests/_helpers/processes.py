"""Process checks shared by the tests that start and reap party processes (from /proc)."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, parent, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: false once it exited, also while an unreaped zombie."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def parent(pid: int) -> int:
    """The parent pid of ``pid``."""
    return int(_stat(pid)[1])


def children(pid: int, zombies: bool = False) -> set[int]:
    """Descendants of ``pid``, a snapshot; exited but unreaped ones only with ``zombies``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = _stat(entry.name)
        except OSError:
            continue
        if zombies or stat[0] != "Z":
            parents[int(entry.name)] = int(stat[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= kids
        frontier = kids
    return out
