"""The execute stage of a run: :func:`execute_run` and the executors it chooses from.

load -> prepare -> method (federated) -> evaluate -> tidy rows: :func:`execute_run` runs
one configuration end to end. How the method runs is an entry of :data:`EXECUTORS`
(``simulation``: in this process through an :class:`smpc.Aggregator`; ``deployment``: as
a Flower deployment on this machine, :func:`fedsc.deploy.experiment.execute_deployed`,
named lazily because it starts Flower); both return a
:class:`~fedsc.run.outcome.MethodOutcome` that :func:`fedsc.run.evaluate.evaluate_run`
evaluates.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import anndata as ad

import smpc
from fedsc import settings
from fedsc.data.inclusion import apply_inclusion
from fedsc.data.validate import validate_adata
from fedsc.methods import MethodSpec, get_method
from fedsc.privacy import in_run
from fedsc.registry import Registry, resolve
from fedsc.run.config import RunConfig, check_holdout_batches
from fedsc.run.evaluate import evaluate_run
from fedsc.run.load import load_dataset
from fedsc.run.outcome import MethodOutcome, Prepared, RunResult
from fedsc.run.prepare import INPUT_PREPARATION, run_inputs

if TYPE_CHECKING:
    from fedsc.privacy.in_run import InRunPrivacy

__all__ = ["EXECUTORS", "Executor", "execute_run", "simulate"]


class Executor(Protocol):
    """Runs the method of one run on its loaded cells; returns what to evaluate."""

    def __call__(
        self,
        adata: ad.AnnData,
        cfg: RunConfig,
        spec: MethodSpec,
        privacy: InRunPrivacy,
        *,
        start: float,
        show_progress: bool | None,
    ) -> MethodOutcome:
        """Prepare the input, run the method, gather its ledger and privacy note."""
        ...


def _run_method(
    adata: ad.AnnData,
    cfg: RunConfig,
    spec: MethodSpec,
    agg: smpc.Aggregator | None,
    show_progress: bool | None,
) -> Prepared:
    """Prepare the input, run the method (or its scenario); return what to evaluate."""
    config = spec.make_config(cfg.params)
    agg = agg if spec.federated else None
    if cfg.scenario is not None:
        inputs = run_inputs(cfg, agg, None, show_progress)
        settings.apply_threads()
        work = spec.scenario(cfg.scenario)(adata, inputs, config)
        return Prepared(work, f"X_{cfg.upstream}", cfg.upstream)
    prepared = INPUT_PREPARATION[spec.input](adata, cfg)
    settings.apply_threads()  # preparation may have changed torch's threads (numba's OpenMP)
    start = time.perf_counter()
    spec.fit(prepared.adata, run_inputs(cfg, agg, prepared.use_rep, show_progress), config)
    prepared.info["fit_seconds"] = time.perf_counter() - start  # the method alone
    if cfg.inclusion != "all":  # evaluate the cells and labels the scenario kept
        work = apply_inclusion(
            prepared.adata,
            batch_key=cfg.batch_key,
            labels_key=cfg.labels_key,
            scenario=cfg.inclusion,
        )
        return Prepared(work, prepared.before, prepared.base, prepared.use_rep, prepared.info)
    return prepared


def simulate(
    adata: ad.AnnData,
    cfg: RunConfig,
    spec: MethodSpec,
    privacy: InRunPrivacy,
    *,
    start: float,
    show_progress: bool | None,
) -> MethodOutcome:
    """The ``simulation`` executor: the method in this process, through the run's aggregator."""
    with privacy.aggregator() as agg:
        prepared = _run_method(adata, privacy.method_cfg, spec, agg, show_progress)
        return MethodOutcome(
            prepared,
            agg.ledger.to_dict(),
            bool(agg.private),
            agg.privacy_note,
            time.perf_counter() - start,
        )


#: How a run's method runs: ``simulation`` (in process) or ``deployment`` (``cfg.deploy``).
EXECUTORS: Registry[Executor | str] = Registry("executor")
EXECUTORS.register("simulation", simulate)
EXECUTORS.register("deployment", "fedsc.deploy.experiment:execute_deployed")


def execute_run(
    cfg: RunConfig, *, adata: ad.AnnData | None = None, show_progress: bool | None = None
) -> RunResult:
    """Run one configuration end to end and return its tidy rows.

    Rows cover the uncorrected input (``method`` = the upstream name, e.g. ``"pca"``, or
    ``"uncorrected"``) and the corrected output, so base-vs-method comparisons come from
    the same run. With ``cfg.deploy`` the method runs as a Flower deployment on this
    machine (:mod:`fedsc.deploy.experiment`) and is evaluated the same way.
    """
    spec = get_method(cfg.method)
    if spec.federated and cfg.deploy is None:
        # CrypTen's fork server imports torch and CrypTen while the data loads (idempotent)
        smpc.prestart(cfg.backend, **cfg.backend_options)
    settings.apply()  # threads, passive waiting, compile caches (idempotent)
    start = time.perf_counter()
    adata = load_dataset(cfg.dataset) if adata is None else adata
    validate_adata(adata, batch_key=cfg.batch_key, labels_key=cfg.labels_key)
    check_holdout_batches(cfg, adata.obs[cfg.batch_key].unique())  # before any training
    privacy = in_run.start(cfg, adata, spec)  # attacks + DP (checked now that n is known)
    executor: Executor = resolve(
        EXECUTORS.get("simulation" if cfg.deploy is None else "deployment")
    )
    outcome = executor(adata, cfg, spec, privacy, start=start, show_progress=show_progress)
    return evaluate_run(cfg, spec, outcome, privacy)
