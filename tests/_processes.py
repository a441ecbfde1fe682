"""Process checks shared by the tests that start and reap party processes."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: false once it exited, also while an unreaped zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
