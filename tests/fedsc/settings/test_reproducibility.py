"""The reproducibility contract (docs/reproducibility.md): the portable mode, its refusals,
the numerical record in run.json, and the thread count training really uses.

Each check runs in a fresh interpreter: kernel choices are fixed when libraries load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _helpers.paths import ROOT

PORTABLE_VARS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "OPENBLAS_CORETYPE",
    "NUMBA_CPU_NAME",
    "NPY_DISABLE_CPU_FEATURES",
    "XLA_FLAGS",
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in PORTABLE_VARS}
    environ = {k: v for k, v in environ.items() if not k.startswith(("FEDSC_", "OMP_", "MKL_"))}
    environ.update(PYTHONPATH=str(ROOT), FEDSC_COMPILE_CACHE="0", **env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300
    )


# A small FedscGen VAE trained for a few steps: every kernel family a run uses (GEMMs,
# batch norm, dropout, Adam), bits hashed.
_TRAIN = """
import fedsc, hashlib, json, sys
fedsc.settings.apply()
import torch
from fedsc.methods.vae import VAE, VAEConfig, make_optimizer, vae_loss
g = torch.Generator().manual_seed(0)
x = torch.rand(256, 300, generator=g) * 3
model = VAE(300, VAEConfig(hidden=(128, 64), latent=10), g)
opt = make_optimizer(model)
model.train()
for step in range(20):
    opt.zero_grad()
    batch = x[(step * 50) % 200 : (step * 50) % 200 + 50]
    recon, mu, logvar = model(batch, g)
    vae_loss(recon, batch, mu, logvar, 1e-6).backward()
    opt.step()
bits = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
env = fedsc.settings.numerical_environment()
print(json.dumps({"hash": hashlib.sha256(bits).hexdigest(), "numerics": env}))
"""


def _train(**env: str) -> dict:
    done = _python(_TRAIN, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.reproducibility
@pytest.mark.slow
def test_portable_training_is_identical_under_every_emulated_cpu():
    # An emulated older CPU: MKL limited to SSE4.2 (make test-dispatch reruns this test
    # with the other libraries' dispatch emulated too)
    sse = {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    native = _train(FEDSC_REPRODUCIBLE="portable")
    assert _train(FEDSC_REPRODUCIBLE="portable", **sse)["hash"] == native["hash"]
    numerics = native["numerics"]
    assert numerics["reproducible"] == "portable" and numerics["threads"] == 1
    assert numerics["torch"]["cpu_capability"] == "AVX2"
    assert numerics["torch"]["mkl_cbwr_branch"] == "COMPATIBLE"
    # positive control: the same emulation changes the fast mode's bits, so the equality
    # above is the portable mode's doing (MKL picks its kernels by instruction set)
    fast = _train(OMP_NUM_THREADS="1")
    assert fast["numerics"]["reproducible"] == "fast"
    assert _train(OMP_NUM_THREADS="1", **sse)["hash"] != fast["hash"]


@pytest.mark.reproducibility
def test_portable_pins_every_loaded_library():
    code = """
import fedsc, json
import numpy, torch, numba, sklearn
fedsc.settings.apply()
from fedsc.settings import _numerics
print(json.dumps({"bad": _numerics.loaded_mismatches(),
                  "env": fedsc.settings.numerical_environment()}))
"""
    done = _python(code, FEDSC_REPRODUCIBLE="portable")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["bad"] == []
    env = out["env"]
    assert {o["architecture"] for o in env["openblas"]} == {"Haswell"}
    assert env["numba_cpu_name"] == "haswell"
    assert env["numpy_simd"]["above_x86_64_v3"] == []
    assert env["environment"]["OMP_NUM_THREADS"] == "1"


def test_portable_is_refused_after_libraries_loaded_unpinned():
    code = """
import numpy, torch
torch.ones(2, 2) @ torch.ones(2, 2)
import fedsc
try:
    fedsc.settings.apply(reproducible="portable")
except ValueError as exc:
    print("REFUSED", exc)
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout
    # the message names what is wrong and the fix
    assert "torch's kernels are" in done.stdout and "FEDSC_REPRODUCIBLE=portable" in done.stdout


def test_portable_refuses_more_than_one_thread_and_unknown_modes():
    from fedsc import settings

    with pytest.raises(ValueError, match="expected 'fast'"):
        settings.update(reproducible="exact")
    code = """
import fedsc
try:
    fedsc.settings.apply(reproducible="portable", threads=2)
except ValueError as exc:
    print("REFUSED", exc)
"""
    done = _python(code)
    assert "REFUSED" in done.stdout and "one thread" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_training_uses_the_thread_count_set_after_numba_ran_in_parallel():
    # numba's OpenMP layer resets the OpenMP thread count it shares with torch to its
    # pool size (the CPU count) the first time it runs a parallel loop (scanpy's
    # normalize_total, in the run's preparation): FedscGen then trained on every CPU
    # whatever OMP_NUM_THREADS said, and its bits depended on the machine's CPU count.
    code = """
import fedsc, os
fedsc.settings.apply()
if os.environ.get("UNPIN"):  # the old behaviour, to show that this check can fail
    os.environ.pop("NUMBA_NUM_THREADS")
    fedsc.settings.apply_threads = lambda: 1
import torch
import fedsc.methods.fedscgen_driver as fg  # the one FedscGen driver runs the rounds
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run
seen = []
inner = fg.run_federation
def spy(*args, **kwargs):
    seen.append(torch.get_num_threads())
    return inner(*args, **kwargs)
fg.run_federation = spy
params = {"rounds": 1, "local_epochs": 1, "hidden": [16]}
execute_run(RunConfig(method="fedscgen", panels=[], params=params), show_progress=False)
print("THREADS", *seen)
"""
    for unpin in ("", "1"):
        done = _python(code, OMP_NUM_THREADS="1", UNPIN=unpin)
        assert done.returncode == 0, done.stderr[-3000:]
        threads = done.stdout.split("THREADS")[-1].split()
        # unpinned, numba's pool is the CPU count (os.cpu_count, as numba counts)
        assert threads == ["1" if not unpin else str(os.cpu_count())], (unpin, threads)


@pytest.mark.slow
def test_run_json_records_the_numerical_environment(tmp_path):
    from fedsc.datasets import simulate

    data = tmp_path / "tiny.h5ad"
    simulate(120, 200, n_batches=3, n_cell_types=3, seed=0).write_h5ad(data)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedsc.cli", "--reproducible", "portable", "run"]
    cmd += ["scbatchprox", "--input", str(data), "--out", str(out)]
    cmd += ["--param", "rounds=2", "--panels", ""]  # no evaluation: not what is tested
    environ = {k: v for k, v in os.environ.items() if k not in PORTABLE_VARS}
    environ.update(PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    numerics = json.loads((out / "run.json").read_text())["numerics"]
    # the command restarted itself with the variables set before numpy and torch loaded
    assert numerics["reproducible"] == "portable"
    assert numerics["torch"]["cpu_capability"] == "AVX2"
    assert numerics["environment"]["MKL_CBWR"] == "COMPATIBLE"
    for key in ("cpu", "openblas", "versions", "threads"):
        assert numerics[key]
    assert "avx2" in numerics["cpu"]["flags"]


def test_changing_threads_after_numba_started_its_pool_keeps_numba_working():
    # numba re-reads NUMBA_NUM_THREADS at every compilation and refuses a value other
    # than its pool's once the pool runs: apply() must not change it after numba loaded
    code = """
import fedsc, numba
fedsc.settings.apply(threads=1)
numba.get_num_threads()  # starts the pool
fedsc.settings.apply(threads=2)
print("OK", numba.njit("f8(f8)")(lambda x: 2 * x)(2.0), fedsc.settings.apply_threads())
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["OK", "4.0", "2"]
    # and with numba loaded after the first apply()
    done = _python(
        code.replace("import fedsc, numba", "import fedsc").replace(
            "numba.get_num_threads()", "import numba; numba.get_num_threads()"
        )
    )
    assert done.returncode == 0, done.stderr[-3000:]
