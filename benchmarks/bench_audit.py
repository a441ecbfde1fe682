"""Empirical privacy audit: claimed ε beside the audited lower bound, for a small grid.

Runs :mod:`fedsc.privacy.audit` (one-run audit, Steinke, Nasr & Jagielski, NeurIPS 2023)
on the real mechanisms and on two deliberately broken ones (positive controls):

- client level (``gaussian`` mechanism, plaintext backend, ``--rounds`` FedAvg rounds,
  ``--canaries`` canary clients): the correct mechanism seen by the output and by the
  plaintext coordinator, the mechanism adding σ/10 while its ledger says σ, and the noise
  drawn from a published ``mechanism_seed`` (the attacker replays and subtracts it);
- cell level (DP-SGD ``local_train``, ``--canaries`` canary cells + 200 cells): correct at
  q = 0.5 (8 steps) and q = 1 (4 full-batch steps), Opacus' optimiser built with σ/10
  while ``local_train`` claims σ, and simulated DP (noise from the published run seed).

σ is calibrated to each ε once per schedule (the cell-level claim follows the config's
neighbouring relation and accountant); each row repeats the audit ``--repeats`` times
with fresh canaries (and fresh OS-entropy noise where the mechanism draws it) and prints
the audited ε's minimum, median and maximum, and the wall and CPU seconds of one audit.
torch runs one thread.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_audit.py [--canaries 1000] [--rounds 5]
        [--repeats 3] [--client-eps 1 2 4 8] [--cell-eps 2 4] [--json out.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # pin BLAS threads before numpy loads

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from fedsc.methods import dp_sgd  # noqa: E402
from fedsc.privacy import audit  # noqa: E402
from fedsc.privacy.accounting import DPConfig  # noqa: E402
from smpc.mechanisms.gaussian import GaussianDP  # noqa: E402

CELLS = 200
#: label -> expected batch half the training cells (else the full batch); 4 local epochs
SCHEDULES = {"q=0.5": True, "q=1": False}


class TenfoldLessNoise(GaussianDP):
    """Positive control: adds σ/10 while its ledger record (hence the claim) says σ."""

    def transform_contribution(self, row: Any, ctx: Any) -> Any:
        claimed = self.noise_multiplier
        self.noise_multiplier = claimed / 10
        try:
            return super().transform_contribution(row, ctx)
        finally:
            self.noise_multiplier = claimed


@contextmanager
def dp_sgd_tenfold_less_noise() -> Iterator[None]:
    """Positive control: Opacus' optimiser gets σ/10; ``local_train`` still claims σ."""
    real = dp_sgd.make_private

    def weak(model: Any, optimizer: Any, dp: DPConfig, *args: Any, **kwargs: Any) -> Any:
        assert dp.noise_multiplier is not None
        return real(
            model, optimizer, dataclasses.replace(dp, noise_multiplier=dp.noise_multiplier / 10),
            *args, **kwargs,
        )  # fmt: skip

    dp_sgd.make_private = weak
    try:
        yield
    finally:
        dp_sgd.make_private = real


def _repeat(run: Callable[[int], audit.AuditResult], repeats: int) -> dict[str, Any]:
    audited, walls, cpus = [], [], []
    result = None
    for rep in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run(rep)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        audited.append(result.audited_epsilon)
    assert result is not None
    return {
        "claimed": result.claimed_epsilon,
        "audited_min": min(audited),
        "audited_median": statistics.median(audited),
        "audited_max": max(audited),
        "exceeds": sum(a > result.claimed_epsilon for a in audited),
        "repeats": repeats,
        "sigma": result.noise_multiplier,
        "steps": result.steps,
        "q": result.sampling_rate,
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "last": result.to_dict(),
    }


def _print(level: str, eps: float, case: str, row: dict[str, Any]) -> None:
    print(
        f"{level:6} eps={eps:<4g} {case:28} sigma={row['sigma']:7.3f} steps={row['steps']:3d} "
        f"q={row['q']:.3f}  claimed={row['claimed']:8.3f}  audited min/med/max="
        f"{row['audited_min']:.3f}/{row['audited_median']:.3f}/{row['audited_max']:.3f}  "
        f"audited>claimed {row['exceeds']}/{row['repeats']}  wall={row['wall_s']:.2f}s cpu={row['cpu_s']:.2f}s",
        flush=True,
    )


def _client_run(
    dp: DPConfig, m: int, rounds: int, options: dict[str, Any], rep: int
) -> audit.AuditResult:
    return audit.audit_client_level(dp, rounds=rounds, n_canaries=m, seed=rep, **options)


def _cell_run(
    dp: DPConfig, m: int, batch_size: int | None, rep: int, simulated: bool = False
) -> audit.AuditResult:
    dp = dataclasses.replace(dp, simulated=simulated)
    return audit.audit_cell_level(
        dp, n_canaries=m, n_cells=CELLS, batch_size=batch_size, local_epochs=4, seed=rep
    )


def client_grid(eps_list: list[float], m: int, rounds: int, repeats: int) -> list[dict]:
    rows = []
    for eps in eps_list:
        dp = DPConfig(noise_multiplier=None, target_epsilon=eps, clip=1.0, delta=1e-5)
        dp = dp.resolve(rounds)
        spec = {k: v for k, v in dp.mechanism_spec().items() if k != "name"}
        cases: dict[str, dict[str, Any]] = {
            "correct (output)": {},
            "correct (plaintext coord.)": {"observer": "coordinator"},
            "noise / 10": {"mechanism": TenfoldLessNoise(**spec)},
            "published noise seed": {"noise_seed": 12345},
        }
        for case, options in cases.items():
            run = functools.partial(_client_run, dp, m, rounds, options)
            row = _repeat(run, repeats)
            _print("client", eps, case, row)
            rows.append({"level": "client", "eps": eps, "case": case, **row})
    return rows


def cell_grid(eps_list: list[float], m: int, repeats: int) -> list[dict]:
    rows = []
    for eps in eps_list:
        for label, half in SCHEDULES.items():
            # σ for ε, once per schedule (the audit's own n_train: every slot under
            # replace-one, about half the canaries under add-or-remove-one)
            target = DPConfig(
                noise_multiplier=None, target_epsilon=eps, clip=0.1, delta=1e-5, level="cell"
            )
            replace_one = getattr(target, "relation", "add_or_remove_one") == "replace_one"
            n_train = CELLS + (m if replace_one else m // 2)
            batch_size = n_train // 2 if half else None
            dp = dp_sgd.resolve_for_clients(target, [n_train], batch_size or n_train, 4, 1)
            dp = dataclasses.replace(dp, target_epsilon=None)

            run = functools.partial(_cell_run, dp, m, batch_size)
            cases: list[tuple[str, Callable[[int], audit.AuditResult], Any]] = [
                (f"correct ({label})", run, nullcontext),
                (f"noise / 10 ({label})", run, dp_sgd_tenfold_less_noise),
                (
                    f"published noise seed ({label})",
                    functools.partial(run, simulated=True),
                    nullcontext,
                ),
            ]
            for case, fn, context in cases:
                with context():
                    row = _repeat(fn, repeats)
                _print("cell", eps, case, row)
                rows.append({"level": "cell", "eps": eps, "case": case, **row})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="client-level FedAvg rounds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--client-eps", type=float, nargs="*", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--cell-eps", type=float, nargs="*", default=[2.0, 4.0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # dp_accounting's RDP convergence warnings
    print(
        f"one-run audit, {args.canaries} canaries, beta=0.05, delta=1e-5; torch threads "
        f"{torch.get_num_threads()}; 'audited>claimed k/n': k of n repeats exceed the claim"
    )
    rows = client_grid(args.client_eps, args.canaries, args.rounds, args.repeats)
    rows += cell_grid(args.cell_eps, args.canaries, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
