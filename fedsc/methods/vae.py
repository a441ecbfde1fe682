"""The scGen / FedscGen variational autoencoder (docs/algorithms.md#vae).

Encoder: genes -> 800 -> 800 (each layer linear, batch norm, LeakyReLU(0.3), dropout 0.05;
the first layer too, unlike the scArches code) -> μ and log-variance heads (latent 10).
Decoder: the mirror, 10 -> 800 -> 800 -> genes, the last layer linear.
Loss: mean-squared reconstruction error (mean over cells and genes) + α · KL, with the KL
divergence summed over the cells of the minibatch and the latent dimensions, α = 1e-6.

Every random draw (weight initialisation, the 90/10 split, minibatch order, dropout
masks, the reparameterisation noise) comes from an explicit :class:`torch.Generator`;
nothing touches torch's global RNG. Dropout is therefore implemented here rather than
with :class:`torch.nn.Dropout`, which draws from the global RNG.

Seeding scheme (shared by :mod:`fedsc.methods.scgen` and :mod:`fedsc.methods.fedscgen`):
generators are derived from the run seed by :func:`derive_generator` with a purpose tag
and indices,

- weights: ``(seed, INIT)``
- 90/10 split of stream ``s`` (a client index; centralized training is stream 0):
  ``(seed, SPLIT, s)``
- epoch ``e`` of stream ``s`` (``e`` counts all epochs the stream has trained, over
  rounds): ``(seed, EPOCH, s, e)``

so a one-client federation of R rounds x E local epochs draws exactly the numbers of
centralized training for R·E epochs.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from fedsc.errors import FedscInputError
from fedsc.federation.seeding import derive_generator
from fedsc.methods.configs import VAEConfig

__all__ = [
    "EPOCH",
    "INIT",
    "SPLIT",
    "VAE",
    "VAEConfig",
    "as_tensor",
    "decode",
    "derive_generator",
    "encode_mean",
    "make_optimizer",
    "model_device",
    "place",
    "split_train_validation",
    "torch_threads",
    "train_epoch",
    "vae_loss",
    "validation_loss",
]

logger = logging.getLogger(__name__)

#: Purpose tags for :func:`derive_generator`.
INIT, SPLIT, EPOCH = 0x1A17, 0x5B17, 0xE90C

_CHUNK = 4096  # cells per forward pass when encoding/decoding/validating without gradients


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch threads, restoring the previous setting (None: no-op)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    logger.debug("torch threads %d -> %d for this block", before, int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class VAE(nn.Module):
    """Encoder/decoder MLP VAE with batch norm and generator-driven dropout.

    Parameters
    ----------
    n_genes
        Input (and output) dimension.
    config
        Architecture and loss settings.
    generator
        Draws the initial weights (PyTorch's default ``nn.Linear`` scheme).
    """

    def __init__(self, n_genes: int, config: VAEConfig, generator: torch.Generator) -> None:
        super().__init__()
        if n_genes < 1:
            raise FedscInputError(f"the VAE needs at least one gene, got n_genes={n_genes}.")
        self.n_genes = int(n_genes)
        self.config = config
        # nn.Linear draws its default init from the global RNG: build under a fork so the
        # global state is left as it was, then re-initialise from `generator`.
        with torch.random.fork_rng(devices=[]):
            self.encoder = self._stack([n_genes, *config.hidden])
            self.mu = nn.Linear(config.hidden[-1], config.latent)
            self.logvar = nn.Linear(config.hidden[-1], config.latent)
            rev = list(reversed(config.hidden))
            self.decoder = self._stack([config.latent, *rev])
            self.out = nn.Linear(rev[-1], n_genes)
        #: Per-epoch (or per-round) training records, filled by the trainers.
        self.history: list[dict[str, float]] = []
        #: Epoch whose state was kept by early stopping (None when not trained that way).
        self.best_epoch: int | None = None
        self._init(generator)

    def _stack(self, dims: list[int]) -> nn.ModuleList:
        layers = []
        for d_in, d_out in itertools.pairwise(dims):
            block = nn.ModuleDict({"linear": nn.Linear(d_in, d_out)})
            if self.config.batch_norm:
                block["norm"] = nn.BatchNorm1d(d_out)
            layers.append(block)
        return nn.ModuleList(layers)

    @torch.no_grad()
    def _init(self, generator: torch.Generator) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def _run(self, stack: nn.ModuleList, h: torch.Tensor, generator: torch.Generator | None):
        p = self.config.dropout
        drop = self.training and p > 0
        if drop and generator is None:
            raise ValueError("training-mode forward passes need a torch.Generator for dropout.")
        for module in stack:
            block = cast(nn.ModuleDict, module)
            h = block["linear"](h)
            if "norm" in block:
                h = block["norm"](h)
            h = nn.functional.leaky_relu(h, self.config.negative_slope)
            if drop:
                # drawn on the CPU generator, then moved: the same masks on every device
                keep = torch.empty(h.shape, dtype=h.dtype).bernoulli_(1.0 - p, generator=generator)
                h = h * keep.to(h.device) * (1.0 / (1.0 - p))
        return h

    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of ``x`` (cells x genes)."""
        h = self._run(self.encoder, x, generator)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Expression reconstructed from latent ``z`` (cells x latent)."""
        return self.out(self._run(self.decoder, z, generator))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, μ, log-variance); samples z in training mode, uses μ otherwise."""
        mu, logvar = self.encode(x, generator)
        if self.training:
            if generator is None:
                raise ValueError("training-mode forward passes need a torch.Generator.")
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z, generator), mu, logvar


def vae_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
) -> torch.Tensor:
    """MSE (mean over cells and genes) + ``kl_weight`` · KL (summed over cells and dims)."""
    mse = nn.functional.mse_loss(recon, x, reduction="mean")
    kl = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp())
    return mse + kl_weight * kl


def make_optimizer(model: VAE) -> torch.optim.Adam:
    """Adam with the configured learning rate (the fused kernel: ~3x faster steps on CPU)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=model.config.lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch without CPU fused Adam
        return torch.optim.Adam(model.parameters(), lr=model.config.lr, foreach=True)


def split_train_validation(
    n: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (train, validation) cell positions: one shuffle, ``ceil((1 - fraction) n)`` train.

    Positions are sorted within each part, so the split does not reorder the data.
    """
    perm = torch.randperm(n, generator=generator)
    n_train = min(n, math.ceil((1.0 - fraction) * n))
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def train_epoch(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    generator: torch.Generator,
    indices: torch.Tensor | None = None,
) -> float:
    """One pass in shuffled full minibatches (the last incomplete one dropped).

    Parameters
    ----------
    model, optimizer
        Trained in place.
    x
        Expression (cells x genes).
    generator
        Draws the minibatch order, the dropout masks and the reparameterisation noise.
    indices
        Rows of ``x`` to train on (e.g. the training part of the split); all rows if None.

    Returns
    -------
    The mean minibatch loss.
    """
    bs = model.config.batch_size
    n = x.shape[0] if indices is None else int(indices.shape[0])
    n_batches = n // bs
    if n_batches == 0:
        raise FedscInputError(
            f"{n} training cells are fewer than one minibatch of batch_size={bs}; "
            "lower batch_size= in the config, or hold this batch out of training."
        )
    model.train()
    kl_weight = model.config.kl_weight
    perm = torch.randperm(n, generator=generator)[: n_batches * bs]
    if indices is not None:
        perm = indices[perm]
    perm = perm.view(n_batches, bs)
    device = model_device(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for idx in perm:
        xb = x[idx].to(device, non_blocking=True)  # no copy when x is on the model's device
        recon, mu, logvar = model(xb, generator)
        loss = vae_loss(recon, xb, mu, logvar, kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    mean = float(total) / n_batches
    logger.debug("epoch: %d minibatches of %d cells, mean loss %.6g", n_batches, bs, mean)
    return mean


@torch.no_grad()
def validation_loss(model: VAE, x: torch.Tensor) -> float:
    """Loss on held-back cells in evaluation mode (z = μ; no randomness).

    Reported on the scale of one training minibatch: MSE (mean) + α · KL summed over the
    cells and rescaled to ``batch_size`` cells. ``nan`` when ``x`` has no cells.
    """
    n = x.shape[0]
    if n == 0:
        return float("nan")
    model.eval()
    device = model_device(model)
    se = torch.zeros((), dtype=torch.float64, device=device)
    kl = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n, _CHUNK):
        xb = x[start : start + _CHUNK].to(device)
        recon, mu, logvar = model(xb)
        se += torch.sum((recon - xb) ** 2, dtype=torch.float64)
        kl += -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dtype=torch.float64)
    cfg = model.config
    return float(se / (n * x.shape[1]) + cfg.kl_weight * kl * (cfg.batch_size / n))


@torch.no_grad()
def encode_mean(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean μ of every cell (evaluation mode), float32 (cells x latent), on the CPU.

    ``x`` may stay on the CPU (or be read lazily): it moves to the model's device one
    chunk at a time.
    """
    _check_genes(model, x)
    model.eval()
    device = model_device(model)
    parts = [
        model.encode(x[s : s + _CHUNK].to(device))[0].cpu() for s in range(0, x.shape[0], _CHUNK)
    ]
    return torch.cat(parts) if parts else torch.zeros((0, model.config.latent))


@torch.no_grad()
def decode(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Decoded expression of latent ``z`` (evaluation mode), float32 (cells x genes), on the CPU."""
    model.eval()
    z = torch.as_tensor(z, dtype=torch.float32)
    device = model_device(model)
    parts = [model.decode(z[s : s + _CHUNK].to(device)).cpu() for s in range(0, z.shape[0], _CHUNK)]
    return torch.cat(parts) if parts else torch.zeros((0, model.n_genes))


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def place(model: VAE) -> VAE:
    """Move ``model`` to ``fedsc.settings.device`` (CUDA when torch sees one, by default).

    The trainers call this before training; states they return may live on that device
    (``smpc.flatten`` copies them to the CPU); :func:`encode_mean` and :func:`decode`
    return CPU tensors.
    """
    from fedsc import settings

    return model.to(settings.resolved_device())


def _check_genes(model: VAE, x: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[1] != model.n_genes:
        raise FedscInputError(
            f"expression has shape {tuple(x.shape)} but the VAE was trained on "
            f"{model.n_genes} genes; subset the data to the training genes in the same order."
        )


def as_tensor(matrix: Any) -> torch.Tensor:
    """Dense float32 tensor of an expression matrix (numpy, sparse, or tensor)."""
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    t = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise FedscInputError(
            "expression contains NaN or Inf; fix or drop those cells/genes before training."
        )
    return t
