"""Refactor safety: the privacy-ablation demo gives the same per-seed values as before.

``data/privacy_ablation_before.csv`` holds every (method, variant, seed, metric) value of
``experiments/privacy_ablation.yaml`` computed by the code as it stood before the
registries/strategies/mechanisms/smpc restructuring (commit cba94e9), in a fresh process
with ``OMP_NUM_THREADS=1`` and one torch thread. Any change of a number here is a change
of behaviour, not a refactor. (``FEDSC_FULL_FIXTURE=1`` checks all forty runs.)

The runs share warm CrypTen parties, as in ``make demo`` (``run_sweep`` with one worker
keeps them warm across runs): the first CrypTen run of the process starts fresh parties,
the later ones reuse them (both paths are checked, and seven start-ups are saved).
Secure-mode sharing is exact, so reusing parties changes no value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
BEFORE = Path(__file__).parent / "data" / "privacy_ablation_before.csv"
SEEDS = "all" if os.environ.get("FEDSC_FULL_FIXTURE") else "42,9999"

# Runs in a fresh interpreter: the OpenMP thread settings must be in the environment
# before torch loads, exactly as when the fixture was recorded.
SCRIPT = """
import sys
import pandas as pd
import torch
from fedsc.runner import execute_run
from fedsc.sweep.study import Study
from smpc.party_pool import warm_parties

study_path, seeds, out = sys.argv[1:4]
rows = []
with warm_parties():  # as run_sweep(workers=1): CrypTen parties start once
    for cfg in Study.from_yaml(study_path).expand():
        if seeds != "all" and cfg.seed not in {int(s) for s in seeds.split(",")}:
            continue
        torch.set_num_threads(1)
        frame = execute_run(cfg, show_progress=False).rows
        rows.append(frame.assign(variant=cfg.variant, seed=cfg.seed))
pd.concat(rows).to_csv(out, index=False, float_format="%.17g")
"""


@pytest.mark.slow
def test_per_seed_values_identical_to_before(tmp_path):
    out = tmp_path / "after.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(ROOT / "experiments" / "privacy_ablation.yaml"),
            SEEDS,
            str(out),
        ],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    keys = ["method", "variant", "seed", "metric"]
    after = pd.read_csv(out, float_precision="round_trip")[[*keys, "value"]]
    before = pd.read_csv(BEFORE, float_precision="round_trip")
    before = before[before.seed.isin(after.seed.unique())][[*keys, "value"]]
    merged = before.merge(after, on=keys, how="outer", suffixes=("_before", "_after"))
    assert len(merged) == len(before) == len(after) > 0
    assert set(after.method) == {"scbatchprox", "pca", "fedscgen", "uncorrected"}
    diff = merged[merged.value_before.to_numpy() != merged.value_after.to_numpy()]
    assert diff.empty, f"values changed:\n{diff.to_string()}"
    np.testing.assert_array_equal(merged.value_before, merged.value_after)
