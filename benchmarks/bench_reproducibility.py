"""How far the same seed's results move across threads, CPU dispatch levels, backends,
simulation vs deployment, and what the portable mode costs (docs/reproducibility.md).

Each environment runs the same cases (bundled pancreas, seed 42) in its own fresh process,
because kernel choices are fixed when the libraries load:

- ``fast-1``: the default mode, one thread (the reference);
- ``fast-2``: the default mode, two threads;
- ``fast-avx2``: one thread, an AVX2-only CPU emulated in every library (ATen's dispatch,
  MKL's instruction limit, OpenBLAS's core type, numpy's SIMD loops, numba's target);
- ``fast-sse4``: one thread, MKL limited to SSE4.2 and ATen to its scalar kernels;
- ``portable`` and ``portable-avx2`` / ``portable-sse4``: the portable mode, natively and
  under the same emulations (must be equal to each other, bit for bit).

Cases: FedscGen (3 rounds x 1 epoch, 256-256; plaintext and CrypTen), scBatchProx (PCA,
plaintext and CrypTen), centralized scGen (3 epochs), FedscGen with client-level DP
(ε = 4) and the attack suite, and, with ``--deploy``, FedscGen deployed on Flower
(plaintext transport) against its simulation. Printed: for each output, the largest
absolute difference from ``fast-1`` (and from ``portable`` for the portable rows), then
the portable mode's cost as a ratio of method time (and of the worker's CPU time) to
``fast-1`` in the same script.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_reproducibility.py [--deploy] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "NUMBA_CPU_NAME": "haswell",
}
_SSE4 = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "fast-1": {"OMP_NUM_THREADS": "1"},
    "fast-2": {"FEDSC_THREADS": "2"},
    "fast-avx2": {"OMP_NUM_THREADS": "1", **_AVX2},
    "fast-sse4": {"OMP_NUM_THREADS": "1", **_SSE4},
    "portable": {"FEDSC_REPRODUCIBLE": "portable"},
    "portable-avx2": {"FEDSC_REPRODUCIBLE": "portable", **_AVX2},
    "portable-sse4": {"FEDSC_REPRODUCIBLE": "portable", **_SSE4},
}
_FEDSCGEN = {"rounds": 3, "local_epochs": 1, "hidden": [256, 256]}
CASES: dict[str, dict] = {
    "fedscgen": {"method": "fedscgen", "panels": ["fedscgen"], "params": _FEDSCGEN},
    "fedscgen/crypten": {
        "method": "fedscgen",
        "panels": ["fedscgen"],
        "params": _FEDSCGEN,
        "backend": "crypten",
    },
    "scbatchprox": {"method": "scbatchprox", "n_comps": 40},
    "scbatchprox/crypten": {"method": "scbatchprox", "n_comps": 40, "backend": "crypten"},
    "scgen": {"method": "scgen", "panels": ["fedscgen"], "params": {"epochs": 3}},
    "fedscgen+dp+attacks": {
        "method": "fedscgen",
        "panels": ["fedscgen"],
        "params": {"rounds": 2, "local_epochs": 2, "hidden": [128, 128], "batch_size": 30},
        "attacks": ["fedscgen_membership", "fedscgen_property", "update_recovery"],
        "dp": {"level": "client", "target_epsilon": 4, "clip": 1.0, "delta": 0.01},
    },
}
DEPLOYED = {"fedscgen/deployed": {**CASES["fedscgen"], "deploy": "plaintext"}}

# ------------------------------------------------------------------------------ worker
_WORKER = r"""
import json, sys, time
import fedsc
import numpy as np
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run
from smpc.party_pool import warm_parties

cases, out = json.loads(sys.argv[1]), sys.argv[2]
record, arrays = {}, {}
cpu = time.process_time()
with warm_parties():
    for name, kwargs in cases.items():
        res = execute_run(RunConfig(seed=42, **kwargs), show_progress=False)
        ad = res.adata
        stores = [("obsm", ad.obsm), ("layer", ad.layers)]
        for kind, store in stores:
            for key in store:
                a = store[key]
                a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
                if a.dtype.kind in "fiu":
                    arrays[f"{name}|{kind}:{key}"] = a
        rows = res.rows
        values = {}
        for r in rows.itertuples():
            key = f"{r.method}/{r.panel}/{r.metric}" + (f"@{r.observer}" if r.observer else "")
            values[key] = float(r.value)
            if r.dp_epsilon == r.dp_epsilon:
                values[f"{r.method}/dp_epsilon"] = float(r.dp_epsilon)
        record[name] = {"values": values, "method_seconds": res.info["method_seconds"]}
record["_cpu_seconds"] = time.process_time() - cpu
record["_numerics"] = fedsc.settings.numerical_environment()
np.savez(out + ".npz", **arrays)
with open(out + ".json", "w") as f:
    json.dump(record, f)
"""


def _run_environment(name: str, cases: dict, folder: Path) -> tuple[dict, dict, float]:
    import numpy as np

    strip = ("FEDSC_", "OMP_", "MKL_", "ATEN_", "OPENBLAS_", "NPY_", "NUMBA_CPU", "XLA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(strip)}
    env.update(PYTHONPATH=str(ROOT), **ENVIRONMENTS[name])
    out = folder / name
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(cases), str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
    wall = time.perf_counter() - start
    record = json.loads(Path(str(out) + ".json").read_text())
    with np.load(str(out) + ".npz") as z:
        arrays = {k: z[k] for k in z.files}
    return record, arrays, wall


def _spread(a: dict, b: dict, arrays_a: dict, arrays_b: dict) -> dict[str, float]:
    """Largest |difference| per output: arrays by key, metrics grouped by case."""
    import numpy as np

    out: dict[str, float] = {}
    for key in sorted(set(arrays_a) & set(arrays_b)):
        x, y = arrays_a[key].astype(np.float64), arrays_b[key].astype(np.float64)
        out[key] = float(np.max(np.abs(x - y))) if x.shape == y.shape else float("inf")
    for case in a:
        if case.startswith("_") or case not in b:
            continue
        va, vb = a[case]["values"], b[case]["values"]
        for key in sorted(set(va) & set(vb)):
            d = abs(va[key] - vb[key])
            if d != d:  # NaN on one side: a metric lost; on both: the same (missing)
                d = 0.0 if va[key] != va[key] and vb[key] != vb[key] else float("inf")
            out[f"{case}|{key}"] = d
    return out


#: Metrics built on clusterings, hard kNN sets or label votes (and aggregates of them).
DISCONTINUOUS = {
    "ari",
    "nmi",
    "ilf1",
    "kmeans_ari",
    "kmeans_nmi",
    "kbet_per_label",
    "isolated_labels",
    "batch_correction",
    "total",
}


def _group(key: str) -> str:
    """``case | output family`` for a detailed key (arrays and metric rows)."""
    case, _, rest = key.partition("|")
    if rest.startswith(("obsm:", "layer:")):
        kind, name = rest.split(":", 1)
        if name in ("X_pca", "counts"):
            return f"{case} | input ({name})"
        return f"{case} | {'latent' if kind == 'obsm' else 'corrected expression'} ({name})"
    method, _, tail = rest.partition("/")
    if tail == "dp_epsilon":
        return f"{case} | epsilon"
    panel, _, metric = tail.partition("/")
    metric = metric.split("@")[0]
    if panel == "attack":
        return f"{case} | attacks"
    if method in ("uncorrected", "pca"):
        return f"{case} | metrics of the input"
    kind = "discontinuous" if metric in DISCONTINUOUS else "continuous"
    return f"{case} | metrics, {kind}"


def _grouped(spread: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in spread.items():
        g = _group(key)
        out[g] = max(out.get(g, 0.0), value)
    return out


def _table(columns: dict[str, dict[str, float]]) -> str:
    keys = sorted({k for c in columns.values() for k in c})
    names = list(columns)
    lines = [f"{'output':56s} " + " ".join(f"{n:>13s}" for n in names)]
    for key in keys:
        cells = [columns[n].get(key) for n in names]
        text = " ".join(f"{'':>13s}" if c is None else f"{c:13.2g}" for c in cells)
        lines.append(f"{key[:56]:56s} {text}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", action="store_true", help="also FedscGen deployed")
    parser.add_argument(
        "--quick", action="store_true", help="FedscGen and scBatchProx only, 4 environments"
    )
    parser.add_argument("--json", default=None, help="write the spreads here")
    args = parser.parse_args()
    cases = dict(CASES)
    names = list(ENVIRONMENTS)
    if args.quick:
        cases = {k: v for k, v in cases.items() if k in ("fedscgen", "scbatchprox")}
        names = ["fast-1", "fast-avx2", "portable", "portable-avx2"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            run_cases = dict(cases)
            if args.deploy and name == "fast-1":
                run_cases.update(DEPLOYED)
            results[name] = _run_environment(name, run_cases, Path(tmp))
            print(f"{name}: {results[name][2]:.1f} s wall", flush=True)
    ref, ref_arrays, _ = results["fast-1"]
    columns = {
        n: _spread(ref, results[n][0], ref_arrays, results[n][1]) for n in names if n != "fast-1"
    }
    # backends and deployment: within fast-1, CrypTen / deployed against plaintext
    backend: dict[str, float] = {}
    for other in ("fedscgen/crypten", "scbatchprox/crypten", "fedscgen/deployed"):
        base = other.split("/")[0]
        if other not in ref:
            continue
        pair = _spread(
            {base: ref[base]},
            {base: ref[other]},
            {k.replace(other, base): v for k, v in ref_arrays.items() if k.startswith(other)},
            {k: v for k, v in ref_arrays.items() if k.startswith(base + "|")},
        )
        backend.update({f"{k} [{other.split('/')[1]}]": v for k, v in pair.items()})
    portable = {
        n: _spread(results["portable"][0], results[n][0], results["portable"][1], results[n][1])
        for n in names
        if n.startswith("portable-")
    }
    by_backend: dict[str, dict[str, float]] = {}
    for key, value in backend.items():
        detail, _, other = key.rpartition(" [")
        column = by_backend.setdefault(other.rstrip("]"), {})
        g = _group(detail)
        column[g] = max(column.get(g, 0.0), value)
    print("\n== largest |difference| from fast-1 (same seed, same process kind)")
    print(_table({**{n: _grouped(c) for n, c in columns.items()}, **by_backend}))
    print("\n== portable under emulated CPUs against portable (must all be 0)")
    print(_table({n: _grouped(c) for n, c in portable.items()}))
    cost = {}
    for name in names:
        record = results[name][0]
        method = sum(
            v["method_seconds"]
            for k, v in record.items()
            if not k.startswith("_") and k not in DEPLOYED
        )
        cost[name] = (method, record["_cpu_seconds"], results[name][2])
    base = cost["fast-1"]
    print("\n== cost against fast-1 (same script; one process per environment; method time")
    print("   of the simulated cases, CPU time of the worker process without its parties)")
    print(f"{'environment':16s} {'method s':>9s} {'ratio':>6s} {'worker CPU s':>13s} {'ratio':>6s}")
    for name, (m, c, _) in cost.items():
        print(f"{name:16s} {m:9.2f} {m / base[0]:6.2f} {c:13.1f} {c / base[1]:6.2f}")
    worst = max(v for c in portable.values() for v in c.values()) if portable else 0.0
    print(f"\nportable: largest difference under emulated CPUs = {worst:.3g} (must be 0)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"spread": columns, "backend": backend, "portable": portable, "cost": cost})
        )
    if worst != 0.0:
        sys.exit("the portable mode is not portable here")


if __name__ == "__main__":
    main()
