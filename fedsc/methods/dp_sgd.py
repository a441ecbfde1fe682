"""Cell-level DP-SGD for FedscGen's local training (Opacus 1.6).

Each client trains the VAE with per-cell gradient clipping and Gaussian noise (Abadi et
al., CCS 2016): Opacus' :class:`~opacus.grad_sample.GradSampleModule` computes every
cell's gradient, :class:`~opacus.optimizers.DPOptimizer` clips each to L2 norm ``C``,
sums them, adds ``N(0, σ²C²)`` per coordinate and divides by the expected batch size,
then steps the wrapped Adam. The unit protected is one cell of one client: whatever the
client releases afterwards (its trained state, every round) is post-processing, so the
guarantee holds against the coordinator even without secure aggregation.

Minibatches: fedsc keeps its own generator-driven sampling rather than Opacus'
DataLoader, and samples the way the accountant assumes: at every step each training
cell is included independently with probability ``q = batch_size / n_train`` (Poisson
sampling; batch sizes vary, an empty batch is still a noisy step). An epoch is
``n_train // batch_size`` steps, as many as the non-DP trainer takes. The generator of
epoch ``e`` is the non-DP one, ``derive_generator(seed, EPOCH, client, e)`` (dropout masks
and reparameterisation noise, which no guarantee relies on).

Randomness the guarantee relies on (the Gaussian noise and the Poisson sampling): by
default both come from the OS CSPRNG (:class:`smpc.mechanisms.secure_random.SecureRandom`,
fresh ``os.urandom`` bytes per step; the optimiser is :class:`SecureDPOptimizer`, Opacus'
clipping with the noise drawn there): nothing is seeded, so nothing can be recorded or
replayed. Opacus' own ``secure_mode`` would do the same through torchcsprng, which is
not installable here. Only ``DPConfig.simulated`` (debugging and tests: reproducible,
never private) seeds them: the noise from ``derive_generator(seed, DP_NOISE, client,
round)`` through Opacus' ``torch.normal``, the sampling from the epoch generator.

Loss: the VAE loss is a minibatch mean of per-cell terms ``mse_i + α·B·KL_i`` (B the
configured batch size), so the per-cell gradient Opacus clips is exactly cell i's share
of the non-DP loss (FedscGen sums the KL over the minibatch).

BatchNorm mixes cells of a minibatch, so it has no per-cell gradient: the DP variant of
the VAE (:func:`to_dp_variant`) replaces every ``BatchNorm1d(C)`` with ``GroupNorm``
(32 groups for the 800-unit layers, what ``opacus.validators.ModuleValidator.fix`` does;
one group for layers of fewer than 32 units, where 32 groups would normalise single
units to a constant). Runs record ``"normalisation": "GroupNorm (DP variant)"``.

ε: each client's cells are protected by ``rounds · local_epochs · (n_train // B)``
Poisson-subsampled Gaussian steps at rate q, accounted by
:mod:`fedsc.privacy.accounting` (``dp_accounting``'s PLD accountant) for the
**replace-one** relation with n_train public (:attr:`DPConfig.relation
<fedsc.privacy.accounting.DPConfig.relation>`, :data:`RELATION`): the steps and q depend
on the exact cell count, which FedAvg reveals as the client's weight, so add-or-remove-one
(a dataset one cell larger runs another mechanism) would not describe what runs. The run
reports the largest ε over clients (:func:`cell_level_epsilon`). σ = 0 is the control:
Opacus' clipping without noise (ε = ∞). DP off (``dp=None``) runs the non-DP trainer
unchanged (bit-identical to FedscGen's local update).

Donor level (``DPConfig(level="donor")``, user-level DP: Levy et al., NeurIPS 2021;
McMahan et al., ICLR 2018): the unit protected is every cell of one donor. Each step
Poisson-samples the client's *donors* at rate q (``donor_sampling_rate``), takes at most
k (``cells_per_donor``) cells of each sampled donor, clips every cell's gradient to C/k
(Opacus' ghost clipping, as at cell level) and adds ``N(0, σ²C²)`` to the sum: a donor's
cells move the sum by at most k · C/k = C however many cells it has. The sum is divided
by the public ``q · D · k`` (D the client's training donors). An epoch is ``round(1/q)``
steps. ε: dp_accounting's PLD for ``round(1/q) · local_epochs · rounds`` Poisson-sampled
Gaussian steps at rate q, replace-one with D public (:data:`DONOR_RELATION`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from opacus.grad_sample import (  # type: ignore[import-untyped]
    GradSampleModule,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import (  # type: ignore[import-untyped]
    DPOptimizer,
    DPOptimizerFastGradientClipping,
)
from opacus.optimizers.optimizer import (  # type: ignore[import-untyped]
    _check_processed_flag,
    _mark_as_processed,
)
from opacus.utils.fast_gradient_clipping_utils import (  # type: ignore[import-untyped]
    DPTensorFastGradientClipping,
)
from opacus.validators import ModuleValidator  # type: ignore[import-untyped]
from torch import nn

from fedsc.errors import FedscInputError
from fedsc.methods.vae import EPOCH, VAE, VAEConfig, derive_generator, train_epoch
from fedsc.privacy.accounting import CELL_RELATION, DONOR_RELATION, DPConfig
from smpc.mechanisms.secure_random import SecureRandom

__all__ = [
    "DONOR_RELATION",
    "DP_NOISE",
    "NORMALISATION",
    "RELATION",
    "DPLocalUpdate",
    "SecureDPOptimizer",
    "SecureDPOptimizerFastGradientClipping",
    "cell_level_epsilon",
    "donor_groups",
    "donor_level_epsilon",
    "donor_steps_per_epoch",
    "dp_model_from_state",
    "dp_vae_loss",
    "local_train",
    "make_private",
    "per_cell_loss",
    "resolve_for_clients",
    "resolve_for_donors",
    "sampling_rate",
    "steps_per_epoch",
    "to_dp_variant",
]

#: Purpose tag of the DP noise generator (``derive_generator(seed, DP_NOISE, client, round)``).
DP_NOISE = 0xD9A0
#: What runs record as the VAE's normalisation under cell-level DP.
NORMALISATION = "GroupNorm (DP variant)"
#: What runs record as the neighbouring relation of cell-level DP (``dp["relation"]``).
RELATION = CELL_RELATION


def _groups(channels: int) -> int:
    """Groups for ``channels`` units: the largest divisor <= 32 leaving >= 16 units each."""
    best = 1
    for g in range(1, 33):
        if channels % g == 0 and channels // g >= 16:
            best = g
    return best


def to_dp_variant(model: VAE) -> VAE:
    """Replace the VAE's ``BatchNorm1d`` layers by ``GroupNorm`` in place; return the model.

    The linear weights are kept; GroupNorm starts at weight 1, bias 0 (no random draw).
    The result passes ``opacus.validators.ModuleValidator.validate(strict=True)``.
    """
    for stack in (model.encoder, model.decoder):
        for block in stack:
            assert isinstance(block, nn.ModuleDict)
            norm = block["norm"] if "norm" in block else None
            if isinstance(norm, nn.BatchNorm1d):
                c = int(norm.num_features)
                block["norm"] = nn.GroupNorm(_groups(c), c, affine=norm.affine)
    ModuleValidator.validate(model, strict=True)
    return model


def dp_model_from_state(state: dict[str, torch.Tensor], n_genes: int, config: VAEConfig) -> VAE:
    """A DP-variant VAE (evaluation mode) holding ``state`` (e.g. the global state)."""
    model = to_dp_variant(VAE(n_genes, config, derive_generator(0, 0)))
    model.load_state_dict(state)
    return model.eval()


def dp_vae_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
    batch_size: int,
) -> torch.Tensor:
    """Mean over cells of ``mse_i + kl_weight · batch_size · KL_i`` (per-cell VAE loss).

    At a minibatch of exactly ``batch_size`` cells it equals
    :func:`fedsc.methods.vae.vae_loss`.
    """
    return per_cell_loss(recon, x, mu, logvar, kl_weight, batch_size).mean()


def per_cell_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
    batch_size: int,
) -> torch.Tensor:
    """Each cell's term ``mse_i + kl_weight · batch_size · KL_i`` (shape: cells)."""
    mse = ((recon - x) ** 2).mean(dim=1)
    kl = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return mse + (kl_weight * batch_size) * kl


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """DP-SGD steps per local epoch: ``n_train // batch_size`` (as the non-DP trainer)."""
    n = n_train // batch_size
    if n == 0:
        raise FedscInputError(
            f"{n_train} training cells are fewer than one minibatch of batch_size="
            f"{batch_size}; lower batch_size= or hold this batch out of training."
        )
    return n


def sampling_rate(n_train: int, batch_size: int) -> float:
    """Poisson sampling rate ``q = batch_size / n_train`` (expected batch = batch_size)."""
    steps_per_epoch(n_train, batch_size)
    return batch_size / n_train


def cell_level_epsilon(
    dp: DPConfig, n_train: int, batch_size: int, local_epochs: int, rounds: int
) -> float:
    """ε of one client's cells after ``rounds`` rounds of ``local_epochs`` DP-SGD epochs.

    Replace-one with ``n_train`` public (``dp.relation``): the mechanism run depends on
    ``n_train``, which the client's FedAvg weight reveals.
    """
    steps = rounds * local_epochs * steps_per_epoch(n_train, batch_size)
    return dp.epsilon(steps, sampling_rate(n_train, batch_size))


def resolve_for_clients(
    dp: DPConfig,
    n_trains: Sequence[int],
    batch_size: int,
    local_epochs: int,
    rounds: int,
) -> DPConfig:
    """``dp`` validated for every client and with σ fixed for the whole federation.

    Checks δ < 1/n_train for each client; with ``noise_multiplier=None`` picks the
    smallest σ that keeps *every* client's ε within ``target_epsilon`` (the largest of the
    per-client calibrated values; replace-one, PLD: ``dp.relation``); with σ given, checks
    it against the target.
    """
    if not n_trains:
        raise FedscInputError("DP-SGD: no training clients.")
    for n in n_trains:
        dp.validate_for(int(n))
    per_client = [
        (rounds * local_epochs * steps_per_epoch(n, batch_size), sampling_rate(n, batch_size))
        for n in n_trains
    ]
    distinct = sorted(set(per_client))  # clients of one size calibrate once
    if dp.noise_multiplier is None:
        resolved = [dp.resolve(steps, q) for steps, q in distinct]
        return max(resolved, key=lambda d: d.noise_multiplier or 0.0)
    for steps, q in distinct:
        dp.resolve(steps, q)
    return dp


def donor_steps_per_epoch(dp: DPConfig) -> int:
    """Donor-level DP-SGD steps per local epoch: ``round(1 / q)`` (at least 1).

    Each donor joins ``round(1/q) · q`` ≈ 1 step per epoch in expectation; the count
    depends on q alone, never on the data.
    """
    q = _donor_rate(dp)
    return max(1, round(1.0 / q))


def _donor_rate(dp: DPConfig) -> float:
    if dp.level != "donor" or dp.donor_sampling_rate is None:
        raise FedscInputError(
            f"donor-level DP-SGD needs DPConfig(level='donor'), got level={dp.level!r}."
        )
    return float(dp.donor_sampling_rate)


def donor_level_epsilon(dp: DPConfig, local_epochs: int, rounds: int) -> float:
    """ε of one donor (all its cells) after ``rounds`` rounds of ``local_epochs`` epochs.

    Replace-one with the client's donor count D public (``dp.relation``); the same for
    every client (the steps and q do not depend on D).
    """
    steps = rounds * local_epochs * donor_steps_per_epoch(dp)
    return dp.epsilon(steps, _donor_rate(dp))


def resolve_for_donors(
    dp: DPConfig, n_donors: Sequence[int], local_epochs: int, rounds: int
) -> DPConfig:
    """``dp`` (donor level) validated for every client's donor count, σ fixed.

    Checks δ < 1/D for each client's D training donors; with ``noise_multiplier=None``
    calibrates σ to ``target_epsilon`` (one calibration: every client runs the same
    steps at the same q); with σ given, checks it against the target.
    """
    if not n_donors:
        raise FedscInputError("donor-level DP-SGD: no training clients.")
    for d in n_donors:
        dp.validate_for(int(d))
    steps = rounds * local_epochs * donor_steps_per_epoch(dp)
    return dp.resolve(steps, _donor_rate(dp))


def donor_groups(donors: torch.Tensor, train_idx: torch.Tensor) -> list[torch.Tensor]:
    """The training rows of each donor (one tensor of row indices per donor, sorted by id).

    ``donors`` holds one integer donor id per row of the client's data. Written by hand:
    Opacus samples and clips per row, and has no notion of a group of rows.
    """
    ids = donors[train_idx]
    order = torch.argsort(ids, stable=True)
    values, counts = torch.unique_consecutive(ids[order], return_counts=True)
    del values
    return list(torch.split(train_idx[order], counts.tolist()))


class _SecureNoise:
    """Opacus' ``add_noise`` with the Gaussian noise drawn from the OS CSPRNG.

    Same as Opacus 1.6's (``DPOptimizer.add_noise`` and the fast-gradient-clipping one,
    including its ``_adjusted_noise_multiplier``): ``p.grad = p.summed_grad + N(0, σ²C²)``
    per value, flags checked and set as Opacus does; only the source differs: one draw of
    :meth:`SecureRandom.standard_normal_torch` per step for all parameters, none at σ = 0.
    """

    noise_source: SecureRandom
    noise_multiplier: float
    max_grad_norm: float
    params: list[Any]  # Opacus' parameters, carrying ``summed_grad``

    def add_noise(self) -> None:
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        std = float(multiplier) * float(self.max_grad_norm)
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.summed_grad)
        sizes = [p.summed_grad.numel() for p in params]
        flat = (
            self.noise_source.standard_normal_torch((sum(sizes),), dtype=torch.float64) * std
            if std > 0
            else None
        )
        offset = 0
        for p, size in zip(params, sizes, strict=True):
            ref = p.summed_grad
            if flat is None:
                noise = torch.zeros_like(ref)
            else:
                part = flat[offset : offset + size].reshape(ref.shape)
                noise = part.to(dtype=ref.dtype, device=ref.device)
            offset += size
            p.grad = (ref + noise).view_as(p)
            _mark_as_processed(ref)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Opacus' :class:`~opacus.optimizers.DPOptimizer` with CSPRNG noise (per-sample clipping)."""

    def __init__(self, *args: object, noise_source: SecureRandom, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.noise_source = noise_source


class SecureDPOptimizerFastGradientClipping(_SecureNoise, DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimiser with CSPRNG noise."""

    def __init__(self, *args: object, noise_source: SecureRandom, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.noise_source = noise_source


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dp: DPConfig,
    expected_batch_size: float,
    noise_generator: torch.Generator | SecureRandom,
    *,
    clipping: str = "ghost",
) -> tuple[GradSampleModule, DPOptimizer]:
    """Wrap ``model`` for per-cell clipping and ``optimizer`` for clipping and noise.

    ``noise_generator``: a :class:`~smpc.mechanisms.secure_random.SecureRandom` (the
    default in :func:`local_train`) gives the ``Secure*`` optimisers, which draw the noise
    from the OS CSPRNG; a seeded ``torch.Generator`` (simulated DP only) gives Opacus' own.

    ``clipping="per_sample"``: Opacus' :class:`~opacus.grad_sample.GradSampleModule`
    materialises every cell's gradient (``p.grad_sample``) and
    :class:`~opacus.optimizers.DPOptimizer` clips and sums them. ``"ghost"`` (default):
    ghost clipping (Li et al., ICLR 2022; Opacus'
    :class:`~opacus.grad_sample.GradSampleModuleFastGradientClipping`) computes each
    cell's gradient *norm* without materialising the gradient (exact for linear layers),
    then a second backward pass of ``Σ_i min(1, C/‖g_i‖) ℓ_i`` gives the sum of clipped
    gradients: the same result, ~20x faster on the 2000-gene VAE. Call
    ``module.to_standard_module()`` when done to remove Opacus' hooks.
    """
    if dp.noise_multiplier is None:
        raise FedscInputError(
            "DP-SGD: noise_multiplier is not set; resolve the DP config to its target "
            "epsilon first (DPConfig.resolve(steps, sampling_rate))."
        )
    if clipping not in ("ghost", "per_sample"):
        raise FedscInputError(
            f"DP-SGD: clipping must be 'ghost' or 'per_sample', got {clipping!r}."
        )
    opts: dict[str, Any] = {
        "noise_multiplier": dp.noise_multiplier,
        "max_grad_norm": dp.clip,
        "expected_batch_size": expected_batch_size,
        "loss_reduction": "mean",
    }
    secure = isinstance(noise_generator, SecureRandom)
    if secure:
        opts["noise_source"] = noise_generator
    else:
        opts["generator"] = noise_generator
    if clipping == "ghost":
        module = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="mean",
            strict=True,
            max_grad_norm=dp.clip,
            use_ghost_clipping=True,
        )
        ghost_cls = (
            SecureDPOptimizerFastGradientClipping if secure else DPOptimizerFastGradientClipping
        )
        return module, ghost_cls(optimizer, **opts)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    return module, (SecureDPOptimizer if secure else DPOptimizer)(optimizer, **opts)


@dataclass
class DPLocalUpdate:
    """Outcome of one client's local training (:func:`local_train`).

    Attributes
    ----------
    state
        The trained state (a copy).
    losses
        Mean minibatch loss per local epoch.
    steps
        Optimiser steps taken in this update.
    sampling_rate
        Poisson sampling rate q (``None`` without DP).
    total_steps
        DP-SGD steps this client's cells have been through after all rounds so far
        (``round_index + 1`` rounds of this length); 0 without DP.
    dp
        The DP settings (``None`` without DP).
    epsilon
        ε of this client's cells after ``total_steps`` (``inf`` without DP), computed on
        first access (a PLD evaluation; a run needs only the last round's).
    """

    state: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    sampling_rate: float | None = None
    total_steps: int = 0
    dp: DPConfig | None = field(default=None, repr=False)

    @cached_property
    def epsilon(self) -> float:
        """ε of this client's cells so far (``dp.epsilon(total_steps, sampling_rate)``)."""
        if self.dp is None or self.sampling_rate is None:
            return math.inf
        return self.dp.epsilon(self.total_steps, self.sampling_rate)


def local_train(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    train_idx: torch.Tensor,
    *,
    seed: int,
    client: int,
    round_index: int,
    local_epochs: int,
    dp: DPConfig | None,
    clipping: str = "ghost",
    donors: torch.Tensor | None = None,
) -> DPLocalUpdate:
    """Train ``local_epochs`` epochs of client ``client`` in round ``round_index``.

    With ``dp=None`` this is FedscGen's non-DP loop (``train_epoch`` with the epoch
    generators ``(seed, EPOCH, client, round_index · local_epochs + j)``), bit-identical
    to :meth:`fedsc.methods.fedscgen.FedScGenMethod.local_update`. With a
    :class:`~fedsc.privacy.accounting.DPConfig` (σ resolved, ``level="cell"``) it runs
    DP-SGD on a DP-variant model (:func:`to_dp_variant`).

    Parameters
    ----------
    model, optimizer
        Trained in place (the optimiser is wrapped for the update only, so its Adam
        moments may be kept across rounds).
    x, train_idx
        The client's expression and the rows it trains on.
    seed, client, round_index, local_epochs
        Select the generators and the epoch numbers, as FedscGen does.
    dp
        ``None``: no DP. Otherwise σ, C, δ and the accountant.
    clipping
        ``"ghost"`` (default, fast) or ``"per_sample"``: how per-cell clipping is
        computed (:func:`make_private`); the released update has the same distribution.
    donors
        Donor level only (``dp.level == "donor"``): an integer donor id per row of ``x``.
        Steps then sample donors, not cells (module docstring).
    """
    cfg = model.config
    if dp is None:
        losses = []
        for j in range(local_epochs):
            g = derive_generator(seed, EPOCH, client, round_index * local_epochs + j)
            losses.append(train_epoch(model, optimizer, x, g, train_idx))
        steps = local_epochs * (len(train_idx) // cfg.batch_size)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return DPLocalUpdate(state, losses, steps)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise FedscInputError(
            "DP-SGD needs the DP variant of the VAE (BatchNorm mixes cells of a batch); "
            "build the model with fedsc.methods.dp_sgd.to_dp_variant(VAE(...))."
        )
    if dp.level == "donor":
        if donors is None or len(donors) != len(x):
            raise FedscInputError(
                "donor-level DP-SGD needs one donor id per cell of the client (donors=, "
                f"{len(x)} rows); set the run's donor_key to the obs column naming donors."
            )
        return _donor_train(
            model, optimizer, x, train_idx, donors, seed, client, round_index, local_epochs, dp
        )
    if donors is not None:
        raise FedscInputError(
            f"donors= is for donor-level DP-SGD; this DP config has level={dp.level!r}."
        )
    n = len(train_idx)
    bs = cfg.batch_size
    per_epoch = steps_per_epoch(n, bs)
    q = sampling_rate(n, bs)
    noise_g: torch.Generator | SecureRandom
    if dp.simulated:  # reproducible from the run seed: debugging and tests only
        noise_g = derive_generator(seed, DP_NOISE, client, round_index)
        secure = None  # the epoch generator samples
    else:  # the OS CSPRNG, no seed: nobody can regenerate the noise or the batches
        noise_g = secure = SecureRandom()
    module, dp_opt = make_private(model, optimizer, dp, bs, noise_g, clipping=clipping)
    ghost = clipping == "ghost"
    params = [p for p in model.parameters() if p.requires_grad]
    module.train()
    losses = []
    try:
        with warnings.catch_warnings():
            # Opacus' hooks on the first layer: the input needs no gradient; nothing is lost.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for j in range(local_epochs):
                g = derive_generator(seed, EPOCH, client, round_index * local_epochs + j)
                total, batches = 0.0, 0
                for _ in range(per_epoch):
                    if secure is None:
                        chosen = torch.rand(n, generator=g) < q
                    else:
                        chosen = torch.from_numpy(secure.random(n) < q)
                    idx = train_idx[chosen]
                    dp_opt.zero_grad(set_to_none=True)
                    if len(idx) == 0:  # an empty Poisson batch is still a (pure-noise) step
                        for p in params:  # Opacus reads per-cell gradients from here
                            if ghost:
                                p.grad = torch.zeros_like(p)
                            else:
                                empty = torch.zeros((0, *p.shape), dtype=p.dtype)
                                setattr(p, "grad_sample", empty)  # noqa: B010
                    else:
                        xb = x[idx]
                        recon, mu, logvar = module(xb, g)
                        terms = per_cell_loss(recon, xb, mu, logvar, cfg.kl_weight, bs)
                        if ghost:  # two backward passes: norms, then clipped sum
                            DPTensorFastGradientClipping(module, dp_opt, terms, "mean").backward()
                        else:
                            terms.mean().backward()
                        total += float(terms.detach().mean())
                        batches += 1
                    dp_opt.step()
                losses.append(total / max(batches, 1))
            dp_opt.zero_grad(set_to_none=True)
    finally:
        module.to_standard_module()
    steps = local_epochs * per_epoch
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return DPLocalUpdate(state, losses, steps, q, (round_index + 1) * steps, dp)


def _donor_train(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    train_idx: torch.Tensor,
    donors: torch.Tensor,
    seed: int,
    client: int,
    round_index: int,
    local_epochs: int,
    dp: DPConfig,
) -> DPLocalUpdate:
    """Donor-level DP-SGD (user-level): Poisson over donors, ≤ k cells each, clip C/k.

    Opacus does the per-cell work (ghost clipping at C/k, the noise through the
    optimiser); the grouping of cells by donor, the donor sampling and the ≤ k cells per
    donor are the hand-written part (Opacus samples and clips rows, not groups of rows).
    The noise multiplier Opacus sees is σ·k, so its std σ·k·(C/k) = σ·C matches the
    donor's sensitivity C.
    """
    import dataclasses

    cfg = model.config
    q = _donor_rate(dp)
    k = int(dp.cells_per_donor or 1)
    groups = donor_groups(donors, train_idx)
    n_donors = len(groups)
    per_epoch = donor_steps_per_epoch(dp)
    assert dp.noise_multiplier is not None
    per_cell = dataclasses.replace(dp, noise_multiplier=dp.noise_multiplier * k, clip=dp.clip / k)
    noise_g: torch.Generator | SecureRandom
    secure: SecureRandom | None
    if dp.simulated:  # reproducible from the run seed: debugging and tests only
        noise_g = derive_generator(seed, DP_NOISE, client, round_index)
        secure = None
    else:
        noise_g = secure = SecureRandom()
    expected = q * n_donors * k  # public: q, D and k
    module, dp_opt = make_private(model, optimizer, per_cell, expected, noise_g)
    params = [p for p in model.parameters() if p.requires_grad]
    module.train()
    losses = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for j in range(local_epochs):
                g = derive_generator(seed, EPOCH, client, round_index * local_epochs + j)
                total, batches = 0.0, 0
                for _ in range(per_epoch):
                    if secure is None:
                        chosen = (torch.rand(n_donors, generator=g) < q).tolist()
                    else:
                        chosen = (secure.random(n_donors) < q).tolist()
                    rows = []
                    for rows_d, take in zip(groups, chosen, strict=True):
                        if not take:
                            continue
                        if len(rows_d) > k:  # which k cells: not part of the guarantee
                            rows_d = rows_d[torch.randperm(len(rows_d), generator=g)[:k]]
                        rows.append(rows_d)
                    dp_opt.zero_grad(set_to_none=True)
                    if not rows:  # no donor sampled: a pure-noise step
                        for p in params:
                            p.grad = torch.zeros_like(p)
                    else:
                        xb = x[torch.cat(rows)]
                        recon, mu, logvar = module(xb, g)
                        terms = per_cell_loss(recon, xb, mu, logvar, cfg.kl_weight, cfg.batch_size)
                        DPTensorFastGradientClipping(module, dp_opt, terms, "mean").backward()
                        total += float(terms.detach().mean())
                        batches += 1
                    dp_opt.step()
                losses.append(total / max(batches, 1))
            dp_opt.zero_grad(set_to_none=True)
    finally:
        module.to_standard_module()
    steps = local_epochs * per_epoch
    state = {k_: v.detach().clone() for k_, v in model.state_dict().items()}
    return DPLocalUpdate(state, losses, steps, q, (round_index + 1) * steps, dp)
