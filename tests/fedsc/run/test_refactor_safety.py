"""Refactor safety: the privacy-ablation demo gives the same per-seed values as before.

Two checks, by what the reproducibility contract (docs/reproducibility.md) promises:

- The default ``fast`` mode uses each CPU's own kernels, so values are equal across
  processors only within a measured spread. ``data/privacy_ablation_before.csv`` holds
  every (method, variant, seed, metric) value of ``experiments/privacy_ablation.yaml``
  computed by the code before the registries/strategies/mechanisms/smpc restructuring
  (commit cba94e9), one thread, on another machine; today's values must stay within 3x
  the measured cross-CPU spread of it. Discontinuous metrics (clusterings, kNN votes) are
  left out: they jump on 1e-6 perturbations.
- The ``portable`` mode (``FEDSC_REPRODUCIBLE=portable``: x86-64-v3 kernels pinned in
  every library, one thread) promises the same bits on every AVX2 CPU:
  ``data/privacy_ablation_portable.csv`` (recorded with ``FEDSC_RECORD_FIXTURE=1``) is
  compared exactly, every metric included.

Any change of a number here is a change of behaviour, not a refactor.
(``FEDSC_FULL_FIXTURE=1`` checks all ten seeds.) CI also runs these tests with the CPU
dispatch of an AVX2-only machine emulated (``make test-dispatch``).

The runs share warm CrypTen parties, as in ``make demo`` (``run_sweep`` with one worker
keeps them warm across runs): the first CrypTen run of the process starts fresh parties,
the later ones reuse them. Secure-mode sharing is exact, so reusing parties changes no value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers.paths import ROOT, checkout_env

DATA = Path(__file__).parent / "data"
BEFORE = DATA / "privacy_ablation_before.csv"
PORTABLE = DATA / "privacy_ablation_portable.csv"
#: The fast mode's seed is not the portable check's: together they cover two seeds.
SEEDS = "all" if os.environ.get("FEDSC_FULL_FIXTURE") else "9999"
#: The exact portable check needs one seed: both methods, both backends, fresh and warm
#: CrypTen parties (scBatchProx's crypten run starts them, FedscGen's reuses them).
PORTABLE_SEEDS = "all" if os.environ.get("FEDSC_FULL_FIXTURE") else "42"
KEYS = ["method", "variant", "seed", "metric"]

#: The fast mode: allowed |difference| per metric, >= 3x the largest spread measured
#: across CPU dispatch levels (AVX-512 vs emulated AVX2: ATen, MKL, OpenBLAS, numpy SIMD,
#: numba) and MKL's kernels (docs/reproducibility.md, benchmarks/bench_reproducibility.py).
FAST_TOLERANCE = {
    # scIB panel (scBatchProx, PCA): measured <= 7e-7
    **dict.fromkeys(
        ["silhouette_batch", "silhouette_label", "bio_conservation", "ilisi_knn"], 1e-5
    ),
    **dict.fromkeys(["clisi_knn", "graph_connectivity", "pcr_comparison"], 1e-5),
    # FedscGen panel: its training's GEMMs differ by processor (measured, largest of 10 seeds)
    "asw_b": 3e-4,
    "asw_c": 3e-4,
    "gc": 1e-5,
    "knn_acc": 2e-3,
    "ebm": 5e-3,
    "kbet": 1e-2,
    "ilisi": 3e-2,
    "clisi": 2e-3,
}
#: Built on clusterings, hard kNN votes or label assignments: they jump on 1e-6
#: perturbations of the embedding (docs/reproducibility.md), so only the portable test,
#: which is exact, checks them. Aggregates that include them go with them.
DISCONTINUOUS = (
    "ari",
    "nmi",
    "ilf1",
    "kmeans_ari",
    "kmeans_nmi",
    "isolated_labels",
    "kbet_per_label",
    "batch_correction",
    "total",
)

# Runs in a fresh interpreter: thread and kernel settings must be in the environment
# before numpy and torch load (hence fedsc first: it applies FEDSC_REPRODUCIBLE).
SCRIPT = """
import sys
import fedsc
import pandas as pd
from fedsc.run.execute import execute_run
from fedsc.sweep.study import Study
from smpc.party_pool import warm_parties

study_path, seeds, methods, out = sys.argv[1:5]
rows = []
with warm_parties():  # as run_sweep(workers=1): CrypTen parties start once
    for cfg in Study.from_yaml(study_path).expand():
        if seeds != "all" and cfg.seed not in {int(s) for s in seeds.split(",")}:
            continue
        if cfg.method not in methods.split(","):
            continue
        fedsc.settings.update(threads=1)
        frame = execute_run(cfg, show_progress=False).rows
        rows.append(frame.assign(variant=cfg.variant, seed=cfg.seed))
pd.concat(rows).to_csv(out, index=False, float_format="%.17g")
"""


def _run_study(tmp_path: Path, methods: str, seeds: str = SEEDS, **env: str) -> pd.DataFrame:
    out = tmp_path / "after.csv"
    environ = checkout_env(OMP_NUM_THREADS="1", **env)
    study = str(ROOT / "experiments" / "privacy_ablation.yaml")
    subprocess.run(
        [sys.executable, "-c", SCRIPT, study, seeds, methods, str(out)],
        check=True,
        env=environ,
        cwd=ROOT,
        timeout=600,
    )
    return pd.read_csv(out, float_precision="round_trip")


def _merge(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    before = before[before.seed.isin(after.seed.unique())][[*KEYS, "value"]]
    merged = before.merge(after[[*KEYS, "value"]], on=KEYS, how="outer", suffixes=("_b", "_a"))
    assert len(merged) == len(before) == len(after) > 0, "the runs' rows changed"
    return merged


@pytest.mark.slow
@pytest.mark.reproducibility
def test_per_seed_values_within_the_cross_cpu_spread_of_before(tmp_path):
    after = _run_study(tmp_path, "scbatchprox,fedscgen")
    assert set(after.method) == {"scbatchprox", "pca", "fedscgen", "uncorrected"}
    merged = _merge(pd.read_csv(BEFORE, float_precision="round_trip"), after)
    assert set(merged.metric) == {*FAST_TOLERANCE, *DISCONTINUOUS}
    checked = merged[merged.metric.isin(list(FAST_TOLERANCE))].copy()
    checked["tolerance"] = checked.metric.map(FAST_TOLERANCE)
    checked["difference"] = (checked.value_a - checked.value_b).abs()
    far = checked[~(checked.difference <= checked.tolerance)]
    assert far.empty, f"values moved beyond the cross-CPU spread:\n{far.to_string()}"


@pytest.mark.slow
@pytest.mark.reproducibility
def test_per_seed_values_identical_in_the_portable_mode(tmp_path):
    record = bool(os.environ.get("FEDSC_RECORD_FIXTURE"))
    after = _run_study(
        tmp_path,
        "scbatchprox,fedscgen",
        "all" if record else PORTABLE_SEEDS,
        FEDSC_REPRODUCIBLE="portable",
    )
    if record:
        after[[*KEYS, "value"]].to_csv(PORTABLE, index=False, float_format="%.17g")
        pytest.skip(f"recorded {PORTABLE.name}")
    merged = _merge(pd.read_csv(PORTABLE, float_precision="round_trip"), after)
    assert set(merged.metric) >= set(DISCONTINUOUS)
    diff = merged[merged.value_b.to_numpy() != merged.value_a.to_numpy()]
    assert diff.empty, f"values changed:\n{diff.to_string()}"
    np.testing.assert_array_equal(merged.value_b, merged.value_a)
