"""The methods' hyper-parameters: one dataclass per method, validated when built.

Torch-free on purpose: :class:`fedsc.run.config.RunConfig` validates a run's ``params``
against these (``MethodSpec.config``) before any data are read, and building a run config
must not import torch. The methods' modules re-export their config
(``from fedsc.methods.fedscgen import FedScGenConfig`` keeps working).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedsc.errors import FedscInputError

__all__ = ["FedScGenConfig", "ScBatchProxConfig", "ScGenConfig", "VAEConfig", "dp_mapping"]


@dataclass
class VAEConfig:
    """VAE hyper-parameters; defaults from FedscGen's table (docs/algorithms.md#vae)."""

    hidden: tuple[int, ...] = (800, 800)
    latent: int = 10
    batch_norm: bool = True
    negative_slope: float = 0.3  # LeakyReLU
    dropout: float = 0.05
    kl_weight: float = 1e-6  # α
    lr: float = 1e-3  # Adam
    batch_size: int = 50  # the last incomplete batch is dropped
    validation_fraction: float = 0.1
    #: torch threads while training/correcting (restored after); None keeps torch's setting.
    #: 1 is fastest for small layers and on busy machines (OpenMP threads stall there).
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = {
            "hidden": len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
            "latent": self.latent >= 1,
            "negative_slope": self.negative_slope >= 0,
            "dropout": 0 <= self.dropout < 1,
            "kl_weight": self.kl_weight >= 0,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 2,
            "validation_fraction": 0 <= self.validation_fraction < 1,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise FedscInputError(
                f"invalid VAE setting(s) {bad}: hidden needs >= 1 layer of >= 1 units, "
                "latent >= 1, negative_slope >= 0, 0 <= dropout < 1, kl_weight >= 0, lr > 0, "
                "batch_size >= 2 (batch norm), 0 <= validation_fraction < 1, "
                "num_threads None or >= 1."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML, run hashes and ``adata.uns``)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass
class ScGenConfig(VAEConfig):
    """Centralized scGen: the VAE settings plus the epoch budget and early stopping."""

    epochs: int = 100
    early_stopping: bool = True  # on the validation loss, restoring the best state
    patience: int = 20  # epochs without improvement before stopping

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1 or self.patience < 1:
            raise FedscInputError(
                f"epochs and patience must be >= 1, got epochs={self.epochs}, "
                f"patience={self.patience}; use early_stopping=False to train every epoch."
            )


@dataclass
class FedScGenConfig(VAEConfig):
    """FedscGen: the VAE settings plus rounds and local epochs (8 x 2 recommended)."""

    rounds: int = 8
    local_epochs: int = 2
    #: Keep each client's Adam moments across rounds (local, never sent). The default,
    #: a fresh optimiser every round, is what FedscGen's trainer does.
    keep_optimizer_state: bool = False
    #: Differential privacy (a :class:`~fedsc.privacy.accounting.DPConfig` mapping) or
    #: ``None`` (off: bit-identical to FedscGen). Any DP setting trains the GroupNorm DP
    #: variant of the VAE (:func:`fedsc.methods.dp_sgd.to_dp_variant`); ``level="cell"``
    #: runs DP-SGD locally, ``level="client"`` leaves the noise to the ``gaussian``
    #: mechanism on the aggregator (BatchNorm buffers do not survive clipping and noise).
    dp: dict[str, Any] | None = None
    #: Donor-level DP (``dp={level: donor}``): the ``obs`` column naming each cell's donor.
    donor_key: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dp is not None:
            from fedsc.privacy.accounting import DPConfig

            dp = DPConfig.from_dict(dp_mapping(self.dp))  # refuses sigma < 0, clip <= 0, ...
            if dp is not None and dp.level == "donor" and not self.donor_key:
                raise FedscInputError(
                    "donor-level DP needs donor_key, the obs column naming each cell's donor "
                    "(a run config's donor_key: donor)."
                )
        if self.rounds < 1 or self.local_epochs < 1:
            raise FedscInputError(
                f"rounds and local_epochs must be >= 1, got rounds={self.rounds}, "
                f"local_epochs={self.local_epochs}."
            )


def dp_mapping(dp: dict[str, Any]) -> dict[str, Any]:
    """``dp`` with σ to calibrate (``None``) when only ``target_epsilon`` is given.

    Without it :class:`~fedsc.privacy.accounting.DPConfig`'s default σ = 1 would run (and
    be recorded) instead of the σ the target calls for.
    """
    if dp.get("target_epsilon") is not None and "noise_multiplier" not in dp:
        return {**dp, "noise_multiplier": None}
    return dp


@dataclass
class ScBatchProxConfig:
    """Hyper-parameters; defaults from the scBatchProx paper (docs/algorithms.md#scbatchprox)."""

    rounds: int = 7
    local_epochs: int = 2
    lr: float = 1e-3
    mu: float = 1e-3  # proximal weight; 0 is the "no proximal term" ablation
    lam: float = 1e-3  # L2 weight on the tables
    batch_size: int = 256
    train_fraction: float = 0.9
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    #: Keep each client's row client-side: the coordinator learns only the total weight
    #: (see the module docstring); ``False`` is the paper's protocol.
    secure_rows: bool = False

    def __post_init__(self) -> None:
        checks = {
            "rounds": self.rounds >= 1,
            "local_epochs": self.local_epochs >= 1,
            "lr": self.lr > 0,
            "mu": self.mu >= 0,
            "lam": self.lam >= 0,
            "batch_size": self.batch_size >= 1,
            "train_fraction": 0 < self.train_fraction <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise FedscInputError(
                f"invalid scBatchProx setting(s) {bad}: rounds, local_epochs and batch_size "
                "must be >= 1, lr > 0, mu and lam >= 0, 0 < train_fraction <= 1."
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (run records, ``adata.uns``)."""
        return asdict(self)
