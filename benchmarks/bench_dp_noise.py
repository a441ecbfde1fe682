"""DP noise from the OS CSPRNG vs seeded generators: cost per DP-SGD step.

Draws the Gaussian noise of one DP-SGD step for the DP variant of the VAE (2000 genes,
hidden 128-128, latent 10: 552,164 parameters) three ways, torch pinned to one thread:

- raw samples: ``SecureRandom.standard_normal`` (os.urandom key, AES-CTR, inverse CDF) vs PCG64
  ``standard_normal`` (the ratio is the CSPRNG's price per value);
- the optimiser's ``add_noise``: ``SecureDPOptimizer`` (the default, non-simulated
  DP-SGD) vs Opacus' ``DPOptimizer`` with a seeded torch generator (simulated DP);
- for scale, one whole ghost-clipping DP-SGD step (forward, two backward passes, noise,
  Adam) on a batch of 50 cells with the secure noise.

Median wall and CPU seconds over ``--reps`` repetitions.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dp_noise.py [--reps 20] [--genes 2000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # pin BLAS threads before numpy loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

from fedsc.methods import dp_sgd  # noqa: E402
from fedsc.methods.vae import INIT, VAE, VAEConfig, derive_generator  # noqa: E402
from fedsc.privacy.accounting import DPConfig  # noqa: E402
from smpc.mechanisms.secure_random import SecureRandom  # noqa: E402


def _median(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` (one warm-up call first)."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _add_noise(optimizer: DPOptimizer, params: list[torch.nn.Parameter]) -> Callable[[], None]:
    def step() -> None:
        for p in params:
            p.summed_grad = torch.zeros_like(p)  # a fresh, unprocessed clipped sum
        optimizer.add_noise()

    return step


def _line(name: str, new: tuple[float, float], base: tuple[float, float], what: str) -> None:
    print(
        f"{name:<34} {new[0] * 1e3:8.2f} ms wall {new[1] * 1e3:8.2f} ms CPU   "
        f"{what}: {base[0] * 1e3:7.2f} ms wall {base[1] * 1e3:7.2f} ms CPU   "
        f"ratio {new[0] / base[0]:5.2f} (wall) {new[1] / base[1]:5.2f} (CPU)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--genes", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg = VAEConfig(hidden=(128, 128), latent=10, batch_size=50)
    model = dp_sgd.to_dp_variant(VAE(args.genes, cfg, derive_generator(0, INIT)))
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    print(f"DP-VAE {args.genes} genes, hidden 128-128: {n:,} parameters; torch threads 1")

    secure, pcg = SecureRandom(), np.random.default_rng(0)
    raw_secure = _median(lambda: secure.standard_normal(n), args.reps)
    raw_pcg = _median(lambda: pcg.standard_normal(n), args.reps)
    _line("raw N(0,1): SecureRandom", raw_secure, raw_pcg, "numpy PCG64")

    dp = DPConfig(noise_multiplier=1.0, clip=1.0, delta=1e-5, level="cell")
    opts = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 50}
    sgd = torch.optim.SGD(params, lr=0.0)
    ours = dp_sgd.SecureDPOptimizer(sgd, noise_source=secure, **opts)
    opacus = DPOptimizer(sgd, generator=torch.Generator().manual_seed(0), **opts)
    noise_secure = _median(_add_noise(ours, params), args.reps)
    noise_torch = _median(_add_noise(opacus, params), args.reps)
    _line("add_noise: SecureDPOptimizer", noise_secure, noise_torch, "Opacus + torch MT")
    for p in params:
        del p.summed_grad

    x = torch.rand(50, args.genes, generator=torch.Generator().manual_seed(1))
    module, dp_opt = dp_sgd.make_private(
        model, torch.optim.Adam(model.parameters(), lr=1e-3), dp, 50, secure
    )
    from opacus.utils.fast_gradient_clipping_utils import (  # type: ignore[import-untyped]
        DPTensorFastGradientClipping,
    )

    gen = torch.Generator().manual_seed(2)

    def full_step() -> None:
        dp_opt.zero_grad(set_to_none=True)
        recon, mu, logvar = module(x, gen)
        terms = dp_sgd.per_cell_loss(recon, x, mu, logvar, cfg.kl_weight, 50)
        DPTensorFastGradientClipping(module, dp_opt, terms, "mean").backward()
        dp_opt.step()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        step = _median(full_step, max(3, args.reps // 4))
    module.to_standard_module()
    extra = noise_secure[0] - noise_torch[0]
    print(
        f"one ghost DP-SGD step (batch 50, secure noise): {step[0] * 1e3:.1f} ms wall, "
        f"{step[1] * 1e3:.1f} ms CPU; the CSPRNG adds {extra * 1e3:.2f} ms "
        f"({extra / step[0]:.1%} of the step)"
    )


if __name__ == "__main__":
    main()
