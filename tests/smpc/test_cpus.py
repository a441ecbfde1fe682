"""CPUs a process may use: affinity, capped by the cgroup quota (v2 and v1)."""

from __future__ import annotations

import os

from smpc import cpus


def test_cgroup_quota_v2_and_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    (tmp_path / "job" / "step").mkdir(parents=True)
    (tmp_path / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert cpus._cgroup_cpu_limit(tmp_path, proc) == 1.5

    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "a").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "a" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu,cpuacct" / "a" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/a\n")
    assert cpus._cgroup_cpu_limit(v1, proc) == 3.0
    assert cpus._cgroup_cpu_limit(tmp_path / "none", proc) is None


def test_available_cpus_respects_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: 2.5)
    assert cpus.available_cpus() == 3
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: 0.2)
    assert cpus.available_cpus() == 1
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: None)
    assert cpus.available_cpus() == 4
