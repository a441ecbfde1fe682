"""Resource budgets checked before any work: model sizes and study sizes.

A model or a study too large for the machine used to start and then die in the allocator
(``hidden: [100000, 100000]``) or run for days (a grid expanding to 10,000 runs). Both are
now counted first, against limits stated here and set in :mod:`fedsc.settings`:

``max_model_params`` (``FEDSC_MAX_MODEL_PARAMS``, default :data:`MAX_MODEL_PARAMS`)
    Parameters of one model. A federated round holds several float32 copies of it (the
    global state, each client's update, Adam's two moments, gradients) plus one float64
    row per client in the aggregator (:func:`smpc.flatten`), about
    ``params x (24 + 8 x clients)`` bytes: 200 M parameters are ~13 GB with 5 clients.
    Above a tenth of the limit a warning gives the count and that estimate.
``max_study_runs`` (``FEDSC_MAX_STUDY_RUNS``, default :data:`MAX_STUDY_RUNS`)
    Runs one study expands to; above a tenth of it a warning gives the count, how it
    multiplies out, and the time it takes at the runs' mean duration so far.

``0`` turns a limit off; ``fedsc --force`` does so for one command.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import fields
from typing import Any

from fedsc import settings
from fedsc.errors import FedscInputError
from fedsc.settings import MAX_MODEL_PARAMS, MAX_STUDY_RUNS

__all__ = [
    "MAX_MODEL_PARAMS",
    "MAX_STUDY_RUNS",
    "ResourceBudgetWarning",
    "check_model_size",
    "check_study_size",
    "model_bytes",
    "vae_parameters",
]

#: Clients assumed by the memory estimate before the data are read (the bundled pancreas).
ASSUMED_CLIENTS = 5


class ResourceBudgetWarning(UserWarning):
    """A model or study past a tenth of its limit: it runs, but check that it is meant."""


def vae_parameters(n_genes: int, hidden: Any, latent: int) -> int:
    """Parameters of :class:`fedsc.methods.vae.VAE` (scGen, FedscGen) for ``n_genes`` genes.

    Counted from its layers: the encoder (Linear + BatchNorm per hidden layer), the mean and
    log-variance heads, the decoder (the hidden layers reversed) and the output layer.
    """
    dims = [int(h) for h in hidden]
    enc = [int(n_genes), *dims]
    dec = [int(latent), *reversed(dims)]
    total = 0
    for stack in (enc, dec):
        for a, b in itertools.pairwise(stack):
            total += a * b + b + 2 * b  # weight, bias, the norm's scale and shift
    total += 2 * (dims[-1] * int(latent) + int(latent))  # mean and log-variance heads
    total += dims[0] * int(n_genes) + int(n_genes)  # output layer (from the first hidden)
    return total


def model_bytes(params: int, clients: int = ASSUMED_CLIENTS) -> int:
    """Memory of a federated round on a model of ``params`` parameters (estimate)."""
    return int(params) * (24 + 8 * int(clients))


def _limit(name: str) -> int:
    return int(getattr(settings, name))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_model_size(cfg: Any, spec: Any, n_genes: int | None = None) -> int | None:
    """Refuse a model above ``max_model_params``; warn above a tenth of it.

    ``cfg`` is a :class:`~fedsc.run.config.RunConfig` (its ``params`` and
    ``n_top_genes``: the genes an expression method reads, unless ``n_genes`` is known).
    Methods whose config has no ``hidden``/``latent`` (scBatchProx: a few numbers per
    client and dimension) are not counted. Returns the parameter count, or ``None``.
    """
    names = {f.name for f in fields(spec.config_class)}
    if not {"hidden", "latent"} <= names:
        return None
    config = spec.make_config(dict(cfg.params))
    genes = int(n_genes if n_genes is not None else cfg.n_top_genes)
    return check_parameters(
        vae_parameters(genes, config.hidden, config.latent),
        f"{spec.name} with hidden={list(config.hidden)}, latent={config.latent} on {genes} genes",
    )


def check_parameters(params: int, what: str, clients: int = ASSUMED_CLIENTS) -> int:
    """``params`` against ``max_model_params`` (``what`` names the model in messages)."""
    limit = _limit("max_model_params")
    if not limit:
        return params
    need = _gib(model_bytes(params, clients))
    if params > limit:
        raise FedscInputError(
            f"{what} has {params:,} parameters, above the limit of {limit:,} "
            f"(a federated round would need about {need} with {clients} clients); use "
            "smaller hidden layers (e.g. hidden: [800, 800]) or fewer genes (n_top_genes), "
            "or raise the limit: FEDSC_MAX_MODEL_PARAMS=N (0: none) or fedsc --force."
        )
    if params > limit // 10:
        warnings.warn(
            f"{what} has {params:,} parameters (about {need} per federated round with "
            f"{clients} clients); the limit is {limit:,}.",
            ResourceBudgetWarning,
            stacklevel=3,
        )
    return params


def check_study_size(
    n_runs: int, breakdown: str, what: str, mean_seconds: float | None = None, workers: int = 1
) -> None:
    """Refuse a study above ``max_study_runs``; warn above a tenth of it.

    Parameters
    ----------
    n_runs
        Runs the study expands to.
    breakdown
        How the count multiplies out (datasets x variants x seeds), for the message.
    what
        The study's name or file.
    mean_seconds
        Mean wall time of the runs already finished in the store, if any (for the estimate).
    workers
        Runs at a time.
    """
    limit = _limit("max_study_runs")
    if not limit:
        return
    if n_runs > limit:
        raise FedscInputError(
            f"{what} expands to {n_runs:,} runs ({breakdown}), above the limit of "
            f"{limit:,}; trim the grid, variants or seeds, or raise the limit: "
            "FEDSC_MAX_STUDY_RUNS=N (0: none) or fedsc --force."
        )
    if n_runs > limit // 10:
        if mean_seconds:
            hours = n_runs * mean_seconds / max(workers, 1) / 3600
            estimate = (
                f"about {hours:.1f} h at the {mean_seconds:.0f} s the finished runs took, "
                f"{max(workers, 1)} at a time"
            )
        else:
            estimate = "no run has finished yet to estimate the time from"
        warnings.warn(
            f"{what} expands to {n_runs:,} runs ({breakdown}); {estimate}. The limit is {limit:,}.",
            ResourceBudgetWarning,
            stacklevel=3,
        )
