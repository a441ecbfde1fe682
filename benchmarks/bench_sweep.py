"""Sweep throughput: runs per minute of the demo study with 1 vs 2 local workers.

The demo study (experiments/privacy_ablation.yaml: scBatchProx and FedscGen x
{plaintext, crypten} x seeds on the bundled pancreas data) runs twice into fresh
directories, once in this process (1 worker) and once on a 2-process pool. Prints runs
per minute and the ratio (2 workers / 1 worker), and how far the two executions' values
differ (torch thread counts differ between them, see below).

    .venv/bin/python benchmarks/bench_sweep.py [--seeds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fedsc.sweep import Study, run_sweep

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "privacy_ablation.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="first N seeds of the study")
    args = parser.parse_args()
    study = Study.from_yaml(STUDY)
    study.seeds = study.seeds[: args.seeds]
    n_runs = len(study.expand())
    rate, tables = {}, {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = run_sweep(study, out, workers=workers, show_progress=False)
        assert res.failed == 0 and res.executed == n_runs
        rate[workers] = 60 * n_runs / res.seconds
        tables[workers] = res.table.sort_values(["run_id", "embedding", "metric"])
        print(
            f"  {workers} worker(s): {n_runs} runs in {res.seconds:6.1f} s = {rate[workers]:5.1f} runs/min"
        )
    same = np.allclose(
        tables[1]["value"].to_numpy(), tables[2]["value"].to_numpy(), atol=1e-9, equal_nan=True
    )
    print(f"privacy_ablation study ({len(study.seeds)} seeds, {n_runs} runs), 2 cores")
    print(f"  ratio 2 workers / 1 worker: {rate[2] / rate[1]:.2f} x   (same values: {same})")


if __name__ == "__main__":
    main()
