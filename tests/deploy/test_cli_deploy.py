"""``fedsc deploy split`` and the deploy command's input errors (fast: no deployment)."""

from __future__ import annotations

import anndata as ad
import numpy as np

from fedsc.cli import main
from fedsc.datasets import pancreas


def test_split_writes_one_file_per_batch_in_cell_order(tmp_path, capsys):
    a = pancreas()
    a.write_h5ad(tmp_path / "all.h5ad")
    assert main(["deploy", "split", str(tmp_path / "all.h5ad"), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    batches = sorted(a.obs["batch"].astype(str).unique())
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == batches
    for b in batches:
        part = ad.read_h5ad(tmp_path / "s" / f"{b}.h5ad")
        want = a[a.obs["batch"] == b]
        assert part.obs_names.tolist() == want.obs_names.tolist()
        np.testing.assert_array_equal(part.X.toarray(), want.X.toarray())


def test_split_names_a_missing_batch_column(tmp_path, capsys):
    a = pancreas()
    a.write_h5ad(tmp_path / "all.h5ad")
    code = main(
        [
            "deploy",
            "split",
            str(tmp_path / "all.h5ad"),
            "--batch-key",
            "nope",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "no obs column 'nope'" in capsys.readouterr().err


def test_site_refuses_to_run_without_tls_or_insecure(tmp_path, capsys):
    data = tmp_path / "site.h5ad"
    pancreas().write_h5ad(data)
    code = main(["deploy", "site", "--data", str(data), "--superlink", "127.0.0.1:1"])
    assert code == 2
    assert "--root-certificates" in capsys.readouterr().err


def test_warm_superexec_forks_only_clientapps():
    """fedsc.deploy.superexec: ClientApp/ServerApp tasks are forked warm; other task types
    go to Flower's own executor; reconcile and close reach it too."""
    from flwr.supercore.constant import TaskType

    from fedsc.deploy.superexec import WarmExecutor, task_argv

    calls = []

    class Fallback:
        def launch(self, spec):
            calls.append(("launch", spec.task_type))
            return "flower"

        def reconcile(self):
            calls.append(("reconcile",))

        def close(self):
            calls.append(("close",))

    class Spec:
        task_type = TaskType.SIMULATION
        runtime_api_address = "127.0.0.1:1"
        token = "t"
        insecure = True
        root_certificates_path = None
        parent_pid = 7
        runtime_dependency_install = False
        task_id = 3

    executor = WarmExecutor(Fallback())
    assert executor.launch(Spec()) == "flower"
    executor.reconcile()
    executor.close()
    assert calls == [("launch", TaskType.SIMULATION), ("reconcile",), ("close",)]
    # the forked tasks get the command line Flower's subprocess executor would run
    Spec.task_type = TaskType.CLIENT_APP
    argv = ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:1", "--token", "t"]
    assert task_argv(Spec()) == [*argv, "--insecure", "--parent-pid", "7"]


def test_supernode_starts_the_warm_superexec(monkeypatch):
    """The SuperNode's `flower-superexec` command becomes `python -m fedsc.deploy.superexec`
    with the same arguments; other commands are untouched."""
    import subprocess
    import sys

    from fedsc.deploy.supernode import _WarmSuperExec

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(args))
    shim = _WarmSuperExec()
    shim.Popen(["flower-superexec", "--insecure", "--runtime-api-address", "127.0.0.1:1"])
    shim.Popen(["other", "x"])
    assert started == [
        [
            sys.executable,
            "-m",
            "fedsc.deploy.superexec",
            "--insecure",
            "--runtime-api-address",
            "127.0.0.1:1",
        ],
        ["other", "x"],
    ]
    assert shim.DEVNULL == subprocess.DEVNULL
