"""How many CPUs this process may use (affinity and cgroup quota), for sizing threads.

Lives in ``smpc`` (the lower layer) because the CrypTen backend sizes its background work
by it; :mod:`fedsc.settings` re-exports :func:`available_cpus`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc: Path | None = None
) -> float | None:
    """CPUs allowed by the cgroup CPU quota (cgroup v2 ``cpu.max`` or v1 CFS), or None.

    Walks from the process's own cgroup up to the root and returns the tightest quota.
    """
    proc = Path("/proc/self/cgroup") if proc is None else proc
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        lines = []
    v2_path, v1_path = "/", "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2] or "/"
        elif "cpu" in parts[1].split(","):
            v1_path = parts[2] or "/"

    limits: list[float] = []

    def ancestors(base: Path, rel: str) -> list[Path]:
        rel_parts = [p for p in rel.split("/") if p]
        return [base.joinpath(*rel_parts[:i]) for i in range(len(rel_parts), -1, -1)]

    for d in ancestors(root, v2_path):  # v2: "max 100000" or "<quota> <period>"
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    for base in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        for d in ancestors(base, v1_path):
            try:
                quota_us = float((d / "cpu.cfs_quota_us").read_text())
                period_us = float((d / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota_us > 0 and period_us > 0:
                limits.append(quota_us / period_us)
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may run on: its CPU affinity, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's CPUs, which in a container or under
    ``taskset`` can be many more than the process gets.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)
