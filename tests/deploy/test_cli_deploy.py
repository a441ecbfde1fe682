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
