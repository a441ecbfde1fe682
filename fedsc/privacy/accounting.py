"""Differential-privacy accounting: ε from a maintained accountant, never a hand formula.

Every ε here comes from Google's ``dp_accounting`` (0.6.0): a Rényi-DP accountant
(:class:`dp_accounting.rdp.RdpAccountant`, the default) or a privacy-loss-distribution
accountant (:class:`dp_accounting.pld.PLDAccountant`, tighter), for the
add-or-remove-one neighbouring relation by default, or replace-one (PLD only: what
cell-level DP-SGD uses, its mechanism depending on the public cell count). A run of
``steps`` releases of the
(subsampled) Gaussian mechanism with noise multiplier σ and Poisson sampling rate q is
the event ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)`` (``q = 1``: plain
``Gaussian(σ)``). The inverse (σ for a target ε) is the library's
:func:`dp_accounting.calibrate_dp_mechanism`.

Two granularities use the same functions (docs/dp.md):

- **client-level** (DP-FedAvg, the ``gaussian`` mechanism of :mod:`smpc.mechanisms`):
  one release per round per protected aggregate, every client in every round (q = 1);
  the unit protected is a whole client, so δ must be below 1/(number of clients);
- **cell-level** (DP-SGD, :mod:`fedsc.methods.dp_sgd`): one release per local step,
  q = expected batch / training cells of the client; the unit is one cell, δ < 1/cells;
- **donor-level** (user-level DP-SGD, :func:`fedsc.methods.dp_sgd.local_train` with donor
  labels): one release per local step, q = the donor sampling rate; the unit is every cell
  of one donor (a person), δ < 1/donors.

σ = 0 (no noise) gives ε = ∞: the DP pipeline without noise, the control of a DP-vs-no-DP
comparison; nothing is claimed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import dp_accounting  # type: ignore[import-untyped]
from dp_accounting import pld, rdp

from fedsc.errors import FedscInputError

__all__ = [
    "ACCOUNTANTS",
    "CELL_RELATION",
    "CLIENT_RELATION",
    "DONOR_RELATION",
    "LEDGER_OBSERVERS",
    "OBSERVER_RECEIVES",
    "DPConfig",
    "DeltaWarning",
    "LedgerAccount",
    "client_level_epsilon",
    "client_level_from_ledger",
    "delta_check",
    "dp_event",
    "dp_record",
    "epsilon",
    "in_dp_sgd_rounds",
    "joint_cell_epsilon",
    "ledger_entries",
    "mechanism_seed",
    "noise_multiplier_for",
    "uncovered_releases",
]

Accountant = Literal["rdp", "pld"]
Level = Literal["client", "cell", "donor"]

#: Levels whose unit is protected by DP-SGD inside a client's local training.
DP_SGD_LEVELS: tuple[str, ...] = ("cell", "donor")

#: Donor-level DP-SGD defaults: the Poisson sampling rate over a client's donors and the
#: most cells a sampled donor contributes to one step (docs/dp.md, "Donor-level DP").
DEFAULT_DONOR_SAMPLING_RATE = 0.2
DEFAULT_CELLS_PER_DONOR = 16

#: Accountant names accepted by :func:`epsilon` and :class:`DPConfig`.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")

#: Upper end of the σ search in :func:`noise_multiplier_for`.
_MAX_SIGMA = 1e4


#: Neighbouring relations accepted by :func:`epsilon` (dp_accounting's, lower case):
#: ``"add_or_remove_one"`` (one unit added or removed; zero-out, one unit replaced by
#: zero, gives the same ε) and ``"replace_one"`` (one unit replaced by any other: the
#: number of units is public; sensitivity 2C for a sum of C-clipped terms).
Relation = Literal["add_or_remove_one", "replace_one"]
RELATIONS: dict[str, Any] = {
    "add_or_remove_one": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE,
}


def _make_accountant(
    name: str, relation: str = "add_or_remove_one", *, pld_grid: float | None = None
) -> dp_accounting.PrivacyAccountant:
    if relation not in RELATIONS:
        raise FedscInputError(
            f"unknown neighbouring relation {relation!r}; choose one of {list(RELATIONS)}."
        )
    if name == "rdp":
        if relation != "add_or_remove_one":
            # dp_accounting 0.6.0's RdpAccountant refuses replace-one for the
            # Poisson-subsampled Gaussian and reads a plain Gaussian event as sensitivity 1
            # whatever the relation: it would understate replace-one's ε
            raise FedscInputError(
                f"the RDP accountant does not support the {relation!r} relation for the "
                "(subsampled) Gaussian mechanism; use accountant='pld'."
            )
        return rdp.RdpAccountant()  # default orders, add-or-remove-one
    if name == "pld":
        if pld_grid is None:  # the library's default discretisation (1e-4)
            return pld.PLDAccountant(RELATIONS[relation])
        return pld.PLDAccountant(RELATIONS[relation], value_discretization_interval=pld_grid)
    raise FedscInputError(f"unknown accountant {name!r}; choose one of {list(ACCOUNTANTS)}.")


def dp_event(noise_multiplier: float, steps: int, sampling_rate: float = 1.0) -> Any:
    """The ``dp_accounting`` event of ``steps`` (Poisson-subsampled) Gaussian releases.

    The event is the same under every neighbouring relation: in ``dp_accounting`` the
    relation belongs to the accountant that composes it (:func:`epsilon`'s ``relation``).
    """
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    one = (
        gaussian
        if sampling_rate >= 1.0
        else dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)
    )
    return dp_accounting.SelfComposedDpEvent(one, int(steps))


def _check_args(noise_multiplier: float, steps: int, sampling_rate: float, delta: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise FedscInputError(
            f"noise_multiplier must be >= 0 and finite, got {noise_multiplier!r}."
        )
    if int(steps) != steps or steps < 0:
        raise FedscInputError(f"steps must be a non-negative integer, got {steps!r}.")
    if not 0 < sampling_rate <= 1:
        raise FedscInputError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}.")
    if not 0 < delta < 1:
        raise FedscInputError(f"delta must be in (0, 1), got {delta!r}.")


def epsilon(
    noise_multiplier: float,
    steps: int,
    sampling_rate: float = 1.0,
    delta: float = 1e-5,
    *,
    accountant: Accountant = "rdp",
    relation: Relation = "add_or_remove_one",
) -> float:
    """ε spent by ``steps`` Gaussian releases with noise multiplier σ at sampling rate q.

    Parameters
    ----------
    noise_multiplier
        σ: noise standard deviation divided by the L2 sensitivity. 0 gives ``inf``.
    steps
        Number of releases composed (0 gives ε = 0).
    sampling_rate
        Poisson sampling rate q in (0, 1] (1: every unit in every release).
    delta
        The δ of (ε, δ)-DP.
    accountant
        ``"rdp"`` (Rényi DP, Mironov 2017; what Opacus and TF Privacy report) or
        ``"pld"`` (privacy loss distributions; tighter).
    relation
        ``"add_or_remove_one"`` (default) or ``"replace_one"`` (PLD only), the
        neighbouring relation σ is measured against (:data:`RELATIONS`): σ is the noise
        std divided by the clipping bound C in both, and replace-one moves a C-clipped
        term by up to 2C.
    """
    _check_args(noise_multiplier, steps, sampling_rate, delta)
    _make_accountant(accountant, relation)  # refuses a bad pair even at 0 steps
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return _spent(
        float(noise_multiplier),
        int(steps),
        float(sampling_rate),
        float(delta),
        accountant,
        relation,
    )


@functools.lru_cache(maxsize=1024)
def _spent(
    noise_multiplier: float,
    steps: int,
    sampling_rate: float,
    delta: float,
    accountant: str,
    relation: str,
) -> float:
    """:func:`epsilon`'s accountant call, memoised.

    A PLD evaluation takes ~0.3-2 s; runs and reports ask for the same ε per client, per
    round and per summary.
    """
    acc = _make_accountant(accountant, relation)
    acc.compose(dp_event(noise_multiplier, steps, sampling_rate))
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    steps: int,
    sampling_rate: float = 1.0,
    delta: float = 1e-5,
    *,
    accountant: Accountant = "rdp",
    relation: Relation = "add_or_remove_one",
    tol: float = 1e-4,
) -> float:
    """The smallest σ whose ε (same accountant and relation) is at most ``target_epsilon``.

    Uses :func:`dp_accounting.calibrate_dp_mechanism` (Brent's method on the accountant),
    so ``epsilon(noise_multiplier_for(e, ...), ...) <= e`` up to ``tol`` in σ. The PLD
    accountant is bracketed first by doubling or halving σ from 1 (its cost grows
    steeply as σ falls: dp_accounting's default search starts at σ = 1e-3, where its
    loss grid needs tens of GiB) and searched on a 10x coarser loss grid
    (:data:`_PLD_CALIBRATION_GRID`; ~10x faster): its pessimistic estimate is still an
    upper bound on ε, so the σ found is at least the one the default grid would give
    (measured: the same to 1e-4 relative, ε within 1e-4 of the target below it).
    """
    _check_args(0.0, steps, sampling_rate, delta)
    _make_accountant(accountant, relation)  # refuses a bad pair before any search
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise FedscInputError(
            f"target_epsilon must be positive and finite, got {target_epsilon!r}; "
            "for no privacy guarantee leave DP off instead."
        )
    if steps == 0:
        return 0.0

    bracket: Any = dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)
    if accountant == "pld":
        bracket = _pld_bracket(target_epsilon, steps, sampling_rate, delta, relation)
    grid = _PLD_CALIBRATION_GRID if accountant == "pld" else None
    try:
        sigma = dp_accounting.calibrate_dp_mechanism(
            lambda: _make_accountant(accountant, relation, pld_grid=grid),
            lambda s: dp_event(s, steps, sampling_rate),
            target_epsilon,
            delta,
            bracket,
            tol=tol,
        )
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError):
        # two ways to miss: the target is so large that even almost no noise (sigma = 1e-3)
        # stays below it, or so small that no sigma in range reaches it
        if (
            accountant == "rdp"
            and epsilon(1e-3, steps, sampling_rate, delta, accountant="rdp", relation=relation)
            <= target_epsilon
        ):
            raise FedscInputError(
                f"target_epsilon={target_epsilon} is larger than what even sigma = 0.001 "
                f"(almost no noise) spends over {steps} step(s) at sampling rate "
                f"{sampling_rate}, delta={delta}: such a target bounds nothing. Choose a "
                "smaller target_epsilon (1-10 is typical), or set noise_multiplier directly "
                "(e.g. 0.5; 0 runs the DP pipeline without noise, epsilon = inf)."
            ) from None
        raise FedscInputError(
            f"no noise multiplier reaches target_epsilon={target_epsilon} at delta={delta} "
            f"over {steps} step(s) at sampling rate {sampling_rate}: the target is too small "
            "for this many releases. Raise target_epsilon or delta, take fewer steps (rounds, "
            "epochs), or set noise_multiplier directly (e.g. 5.0)."
        ) from None
    sigma = float(sigma)
    if sigma > _MAX_SIGMA:  # pragma: no cover - absurd targets only
        raise FedscInputError(f"target_epsilon={target_epsilon} needs sigma={sigma:.3g}.")
    return sigma


#: Smallest σ the PLD bracket search tries (below it the PLD grid grows too large).
_PLD_MIN_SIGMA = 0.125
#: Loss-grid spacing of the PLD accountant while calibrating σ (dp_accounting's
#: ``value_discretization_interval``; its default, used for every reported ε, is 1e-4).
_PLD_CALIBRATION_GRID = 1e-3


def _pld_bracket(
    target_epsilon: float, steps: int, sampling_rate: float, delta: float, relation: Relation
) -> Any:
    """σ_low < σ_high with ε(σ_low) > target >= ε(σ_high), σ doubled or halved from 1."""

    def over(s: float) -> bool:
        acc = _make_accountant("pld", relation, pld_grid=_PLD_CALIBRATION_GRID)
        acc.compose(dp_event(s, steps, sampling_rate))
        return float(acc.get_epsilon(delta)) > target_epsilon

    if over(1.0):
        low, high = 1.0, 2.0
        while over(high):
            if high >= _MAX_SIGMA:  # pragma: no cover - absurd targets only
                raise FedscInputError(f"target_epsilon={target_epsilon} needs sigma > {high:g}.")
            low, high = high, 2 * high
    else:
        low, high = 0.5, 1.0
        while not over(low):
            if low <= _PLD_MIN_SIGMA:
                raise FedscInputError(
                    f"target_epsilon={target_epsilon} is met at sigma={low:g} already "
                    f"over {steps} step(s) at sampling rate {sampling_rate} (an epsilon that "
                    "large protects nothing); lower the target or set noise_multiplier."
                )
            low, high = low / 2, low
    return dp_accounting.ExplicitBracketInterval(low, high)


@dataclass(frozen=True)
class DPConfig:
    """Settings of one DP guarantee (client-level DP-FedAvg or cell-level DP-SGD).

    Attributes
    ----------
    noise_multiplier
        σ >= 0: Gaussian noise std divided by the clipping bound C. ``None``: derive it
        from ``target_epsilon`` with :meth:`resolve`. 0 is the control of a DP-vs-no-DP
        comparison: the same pipeline (clipping, uniform weighting, the GroupNorm VAE)
        without noise, ε = ∞ (never private).
    clip
        C > 0: L2 bound on each client's update (client level) or each cell's gradient
        (cell level).
    delta
        δ of (ε, δ)-DP, in (0, 1); :meth:`validate_for` requires δ < 1/n for the n units
        protected (clients or cells).
    target_epsilon
        Optional ε budget: with ``noise_multiplier=None`` σ is calibrated to it; with
        both given, :meth:`resolve` checks that σ meets it.
    accountant
        ``"rdp"`` or ``"pld"``; ``None`` (default): ``"rdp"`` at client level, ``"pld"``
        at cell level (the only one of the two for replace-one, see :attr:`relation`).
    level
        ``"client"`` (a whole client is the unit protected), ``"cell"`` (one cell of a
        client) or ``"donor"`` (every cell of one donor, a person: user-level DP-SGD).
    donor_sampling_rate
        Donor level only: the Poisson rate q at which each of a client's donors joins a
        DP-SGD step (default :data:`DEFAULT_DONOR_SAMPLING_RATE`); an epoch is
        ``round(1 / q)`` steps.
    cells_per_donor
        Donor level only: the most cells k a sampled donor contributes to one step
        (default :data:`DEFAULT_CELLS_PER_DONOR`); each cell's gradient is clipped to C/k,
        so one donor moves the step's sum by at most C.
    simulated
        ``False`` (default): the noise (and DP-SGD's Poisson sampling) is drawn from fresh
        OS entropy that nothing records. ``True``: drawn from the run seed, which run.json
        publishes, so anyone can regenerate and subtract it: for debugging and tests only;
        such runs are labelled ``simulated DP`` and never ``private``.

    DP off is no :class:`DPConfig` at all (``dp: None`` in a config): runs are then
    bit-identical to runs without DP.
    """

    noise_multiplier: float | None = 1.0
    clip: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    accountant: Accountant = None  # type: ignore[assignment]  # None: set per level
    level: Level = "client"
    simulated: bool = False
    donor_sampling_rate: float | None = None
    cells_per_donor: int | None = None

    @property
    def relation(self) -> Relation:
        """The neighbouring relation ε is accounted for (:func:`epsilon`).

        Client level: ``"add_or_remove_one"`` (the ``gaussian`` mechanism's zero-out
        relation gives the same ε). Cell level: ``"replace_one"`` with each client's
        number of training cells n public: DP-SGD's steps (``n // B``) and sampling rate
        (``B / n``) depend on n, and n is revealed as the client's FedAvg weight, so the
        neighbouring datasets are those of the same size, one cell replaced. Donor level:
        ``"replace_one"`` with each client's number of training donors D public (all cells
        of one donor replaced by another donor's cells: the donor's clipped contribution
        moves the step's sum by up to 2C; D is the client's FedAvg weight and sets the
        normalisation q·D), :data:`DONOR_RELATION`.
        """
        return "replace_one" if self.level in DP_SGD_LEVELS else "add_or_remove_one"

    def __post_init__(self) -> None:
        if not isinstance(self.simulated, bool):
            raise FedscInputError(
                f"DP config: simulated must be true or false, got {self.simulated!r}."
            )
        s = self.noise_multiplier
        if s is None:
            if self.target_epsilon is None:
                raise FedscInputError(
                    "DP config: give noise_multiplier (sigma > 0) or target_epsilon (sigma "
                    "is then calibrated); to turn DP off, drop the dp block (dp: null)."
                )
        elif not (math.isfinite(s) and s >= 0):
            raise FedscInputError(
                f"DP config: noise_multiplier must be >= 0, got {s!r}; use e.g. 1.0 (larger "
                "is more private), 0 for the DP pipeline without noise (the control, "
                "epsilon = inf), or drop the dp block (dp: null) to turn DP off."
            )
        elif s == 0 and self.target_epsilon is not None:
            raise FedscInputError(
                f"DP config: noise_multiplier=0 (no noise, epsilon = inf) cannot meet "
                f"target_epsilon={self.target_epsilon}; drop target_epsilon for the "
                "noise-free control, or set noise_multiplier to null to calibrate it."
            )
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise FedscInputError(
                f"DP config: clip must be > 0, got {self.clip!r}; it bounds each "
                f"{_CLIP_UNIT[self.level] if self.level in _CLIP_UNIT else 'contribution'} "
                "in L2 norm (e.g. 1.0)."
            )
        if not 0 < self.delta < 1:
            raise FedscInputError(
                f"DP config: delta must be in (0, 1), got {self.delta!r}; use a value "
                "well below 1/n for n protected units, e.g. 1e-5."
            )
        if self.target_epsilon is not None and not (
            math.isfinite(self.target_epsilon) and self.target_epsilon > 0
        ):
            raise FedscInputError(
                f"DP config: target_epsilon must be positive and finite, got "
                f"{self.target_epsilon!r}, or None."
            )
        if self.level not in ("client", "cell", "donor"):
            raise FedscInputError(
                f"DP config: level must be 'client', 'cell' or 'donor', got {self.level!r}."
            )
        self._check_donor_settings()
        if self.accountant is None:
            pld_default = self.level in DP_SGD_LEVELS
            object.__setattr__(self, "accountant", "pld" if pld_default else "rdp")
        if self.accountant not in ACCOUNTANTS:
            raise FedscInputError(
                f"DP config: unknown accountant {self.accountant!r}; choose one of "
                f"{list(ACCOUNTANTS)}."
            )
        if self.level in DP_SGD_LEVELS and self.accountant != "pld":
            unit = "cell count" if self.level == "cell" else "donor count"
            raise FedscInputError(
                f"DP config: {self.level}-level DP-SGD is accounted replace-one with the "
                f"{unit} public, which the {self.accountant!r} accountant does not support "
                f"for the subsampled Gaussian; use accountant: pld (the default at "
                f"{self.level} level)."
            )

    def _check_donor_settings(self) -> None:
        """Donor-level keys: only at donor level, q in (0, 1], k >= 1; defaults filled."""
        if self.level != "donor":
            given = [
                k
                for k in ("donor_sampling_rate", "cells_per_donor")
                if getattr(self, k) is not None
            ]
            if given:
                raise FedscInputError(
                    f"DP config: {given} apply to donor-level DP only (level: donor), this "
                    f"config has level={self.level!r}; drop them or set level: donor."
                )
            return
        q = self.donor_sampling_rate
        if q is None:
            object.__setattr__(self, "donor_sampling_rate", DEFAULT_DONOR_SAMPLING_RATE)
        elif isinstance(q, bool) or not (isinstance(q, int | float) and 0 < q <= 1):
            raise FedscInputError(
                f"DP config: donor_sampling_rate must be in (0, 1], got {q!r}; it is the "
                "probability that a donor joins a DP-SGD step (e.g. 0.2)."
            )
        k = self.cells_per_donor
        if k is None:
            object.__setattr__(self, "cells_per_donor", DEFAULT_CELLS_PER_DONOR)
        elif isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise FedscInputError(
                f"DP config: cells_per_donor must be a whole number >= 1, got {k!r}; it is "
                "the most cells one sampled donor contributes to a step (e.g. 16)."
            )

    def validate_for(self, n: int) -> None:
        """Refuse δ >= 1/n, n being the number of protected units (clients, cells, donors).

        With δ >= 1/n a mechanism that publishes one unit's data at random satisfies the
        guarantee, so it means nothing.
        """
        unit = {"client": "clients", "cell": "cells", "donor": "donors"}[self.level]
        if n < 1:
            raise FedscInputError(f"DP config: need at least one of the {unit}, got {n}.")
        if self.delta >= 1.0 / n:
            raise FedscInputError(
                f"DP config: delta={self.delta!r} is not below 1/n = {1.0 / n:.3g} for the "
                f"n={n} {unit} protected ({self.level}-level DP); set delta < {1.0 / n:.3g}, "
                f"e.g. delta={_suggest_delta(n):.0e}."
            )

    def resolve(self, steps: int, sampling_rate: float = 1.0) -> DPConfig:
        """The config with σ fixed: calibrated to ``target_epsilon`` if σ is ``None``.

        With both σ and ``target_epsilon`` given, raises if σ spends more than the target.
        """
        if self.noise_multiplier is None:
            assert self.target_epsilon is not None
            sigma = noise_multiplier_for(
                self.target_epsilon,
                steps,
                sampling_rate,
                self.delta,
                accountant=self.accountant,
                relation=self.relation,
            )
            return dataclasses.replace(self, noise_multiplier=sigma)
        if self.target_epsilon is not None:
            eps = self.epsilon(steps, sampling_rate)
            if eps > self.target_epsilon * (1 + 1e-9):
                raise FedscInputError(
                    f"DP config: noise_multiplier={self.noise_multiplier} spends "
                    f"epsilon={eps:.4g} over {steps} step(s) at sampling rate {sampling_rate}, "
                    f"above target_epsilon={self.target_epsilon}; raise noise_multiplier or "
                    "set it to null to calibrate it to the target."
                )
        return self

    def epsilon(self, steps: int, sampling_rate: float = 1.0) -> float:
        """ε of ``steps`` releases at ``sampling_rate`` under :attr:`relation` (σ set; ∞ at σ = 0)."""
        if self.noise_multiplier is None:
            raise FedscInputError(
                "DP config: noise_multiplier is not set yet; call resolve(steps, "
                "sampling_rate) first to calibrate it to target_epsilon."
            )
        return epsilon(
            self.noise_multiplier,
            steps,
            sampling_rate,
            self.delta,
            accountant=self.accountant,
            relation=self.relation,
        )

    def mechanism_spec(self, **options: Any) -> dict[str, Any]:
        """The ``gaussian`` mechanism spec for ``smpc.make_aggregator(mechanisms=[...])``.

        Client level only; σ must be set (:meth:`resolve` with ``steps`` = rounds ×
        releases per round and sampling rate 1). ``options`` go to the mechanism
        (``weighting``, ``metrics``, ``min_honest``, ...).
        """
        if self.level != "client":
            raise FedscInputError(
                "DP config: the gaussian mechanism is client-level DP; this config has "
                f"level={self.level!r} (cell-level DP is DP-SGD: fedsc.methods.dp_sgd)."
            )
        if self.noise_multiplier is None:
            raise FedscInputError(
                "DP config: noise_multiplier is not set yet; call resolve(rounds) first to "
                "calibrate it to target_epsilon."
            )
        return {
            "name": "gaussian",
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            **options,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML, run.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DPConfig | None:
        """Build from a config mapping; ``None`` (DP off) stays ``None``."""
        if data is None:
            return None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise FedscInputError(
                f"DP config: unknown key(s) {unknown}; known keys are {sorted(known)}."
            )
        return cls(**data)


def _suggest_delta(n: int) -> float:
    """A conventional δ: a power of ten at most 1/(10 n)."""
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * n)))


def client_level_epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    *,
    releases_per_round: int = 1,
    accountant: Accountant = "rdp",
) -> float:
    """ε of DP-FedAvg (the ``gaussian`` mechanism) after ``rounds`` rounds.

    Every client takes part in every round (sampling rate 1), so the run is
    ``rounds · releases_per_round`` Gaussian releases of noise multiplier σ
    (``releases_per_round`` is 2 when the metrics are noised too:
    ``GaussianDP.releases_per_round``).
    """
    return epsilon(noise_multiplier, rounds * releases_per_round, 1.0, delta, accountant=accountant)


#: ``dp_noise`` in run.json: where the DP noise came from.
NOISE_FRESH = "fresh OS entropy (not recorded): os.urandom-keyed AES-256-CTR, a CSPRNG"
NOISE_SIMULATED = "simulated: seeded from the published run seed (not private)"


def dp_record(
    epsilon_spent: float,
    config: DPConfig,
    *,
    steps: int,
    sampling_rate: float,
    mechanism: str,
) -> dict[str, Any]:
    """The DP fields of a run record (run.json and every tidy row): ``dp_epsilon`` etc.

    ``dp_epsilon`` is ``None`` for ε = ∞ (JSON has no infinity).
    """
    return {
        "dp_epsilon": None if math.isinf(epsilon_spent) else float(epsilon_spent),
        "dp_delta": float(config.delta),
        "dp_level": config.level,
        "dp_mechanism": mechanism,
        "dp_noise_multiplier": config.noise_multiplier,
        "dp_clip": float(config.clip),
        "dp_steps": int(steps),
        "dp_sampling_rate": float(sampling_rate),
        "dp_accountant": (
            f"dp_accounting {config.accountant.upper()} ({config.relation.replace('_', '-')})"
        ),
        "dp_noise": NOISE_SIMULATED if config.simulated else NOISE_FRESH,
    }


#: Observers whose ε is read off the ledger (docs/dp.md, "Observers").
LEDGER_OBSERVERS: tuple[str, ...] = (
    "output",
    "coordinator",
    "party",
    "colluding_parties",
    "client",
)

#: What each observer of :data:`LEDGER_OBSERVERS` receives, as the accounting reads it.
OBSERVER_RECEIVES: dict[str, str] = {
    "output": "the released aggregates (every round's global state, the correction's "
    "results): every client's noise share",
    "coordinator": "the aggregates of private operations; each client's noised contribution "
    "where an operation was not private (plaintext backend, debug mode)",
    "party": "one computation party: uniformly random shares of private operations (additive "
    "sharing among P >= 2 parties) and the released aggregates; each client's noised "
    "contribution where an operation was not private",
    "colluding_parties": "two parties pooling their shares: what one party sees while P > 2 "
    "(any P - 1 additive shares are uniform); each client's noised contribution if P <= 2",
    "client": "one client: the released aggregates, less its own noise share (it knows it): "
    "the other clients' noise is left",
}

#: Coalition size of the party observers.
_COALITION = {"party": 1, "colluding_parties": 2}

#: run.json ``dp["relation"]`` of client-level DP (the ``gaussian`` mechanism).
CLIENT_RELATION = (
    "client: zero-out (one client's clipped update present or replaced by zero; the number "
    "of clients and the FedAvg weights public; Kairouz et al., ICML 2021)"
)

#: run.json ``dp["relation"]`` of cell-level DP (DP-SGD, :mod:`fedsc.methods.dp_sgd`).
CELL_RELATION = (
    "cell: replace-one with n public (one training cell replaced by another; each "
    "client's number of training cells n is public: FedAvg reveals it as the weight, "
    "and it sets the steps n // B and the sampling rate B / n)"
)

#: run.json ``dp["relation"]`` of donor-level DP (user-level DP-SGD, :mod:`fedsc.methods.dp_sgd`).
DONOR_RELATION = (
    "donor: replace-one with D public (all training cells of one donor replaced by another "
    "donor's cells, whatever their number; each client's number of training donors D is "
    "public: it is the client's FedAvg weight and sets the normalisation q*D; the steps "
    "round(1/q) per epoch and the donor sampling rate q do not depend on the data)"
)

#: What each level's clip bounds (messages).
_CLIP_UNIT = {
    "client": "client update",
    "cell": "per-cell gradient",
    "donor": "donor's contribution to a step (each of its k cells' gradients at C/k)",
}

#: ``unit`` of :func:`client_level_from_ledger`.
Unit = Literal["client", "cell"]

#: Ledger tag of the engine's per-round metrics aggregation (smpc.mechanisms.gaussian).
_METRICS_TAG = "metrics"


@dataclass(frozen=True)
class LedgerAccount:
    """DP of the ``gaussian`` mechanism's releases read off a ledger, for one observer.

    Attributes
    ----------
    epsilon
        ε of the noised releases this observer received, composed (0 if nothing was
        released under DP; ∞ if a value was released without noise and nothing under DP;
        NaN if the observer took no part, see ``applicable``). It covers the noised
        releases only: see ``uncovered``.
    delta
        The δ it holds at.
    releases
        Number of Gaussian releases composed, per noise multiplier *as this observer
        faces it* (σ/√m for one client's contribution, σ·√(n/m) for an aggregate, ...).
    uncovered
        ``"op:tag" -> count`` of operations that revealed values without the ``gaussian``
        mechanism covering them (outside the guarantee; e.g. FedscGen's ``correction/*``
        steps, ``argmax``), and ``"op:tag:weights"`` for the FedAvg weights (cell counts)
        of covered operations, revealed as they are.
    observer
        One of :data:`LEDGER_OBSERVERS`.
    unit
        ``"client"`` (the zero-out relation of the mechanism) or ``"cell"`` (the bound it
        gives one cell of a client: sensitivity 2C, see :func:`client_level_from_ledger`).
    applicable
        False when the observer took no part in the run (no computation parties in the
        ledger for ``party``/``colluding_parties``).
    views
        How many noised releases the observer saw as ``per_client`` (one client's noised
        contribution), ``aggregate`` or ``aggregate_less_own`` (a client's view).
    """

    epsilon: float
    delta: float
    releases: dict[float, int]
    uncovered: dict[str, int]
    observer: str = "output"
    unit: str = "client"
    applicable: bool = True
    views: dict[str, int] = dataclasses.field(default_factory=dict)


def ledger_entries(ledger: Any) -> list[dict[str, Any]]:
    """The entries of a ledger, its ``to_dict()`` form or a list of entries (None: none)."""
    if ledger is None:
        return []
    if isinstance(ledger, list):
        return ledger
    if isinstance(ledger, dict):
        return list(ledger["entries"])
    return list(ledger.to_dict()["entries"])


def _has_parties(entries: list[dict[str, Any]]) -> bool:
    return any(e.get("bytes_to_party") for e in entries)


def _view(observer: str, entry: dict[str, Any]) -> str:
    """How ``observer`` saw the noised values of one operation."""
    if observer == "client":
        return "aggregate_less_own"
    private = bool(entry.get("private", False))  # absent: not private (the cautious reading)
    if observer == "output" or (observer == "coordinator" and private):
        return "aggregate"
    if observer == "coordinator":
        return "per_client"
    # A coalition of c of the P parties of an additive P-out-of-P sharing (the only one
    # smpc ships: smpc/sharing.py, docs/smpc.md) holds c uniformly random shares while
    # c < P: it learns the inputs only if c >= P, or if the operation was not private.
    parties = len(entry.get("bytes_to_party") or [])
    if parties and (not private or parties <= _COALITION[observer]):
        return "per_client"
    return "aggregate"  # shares carry nothing; the party reads the released aggregates


def _multiplier(view: str, sigma: float, n: int, share: int) -> float | None:
    """Noise multiplier of one release as seen through ``view``; None: nothing released.

    Each of the ``n`` clients added ``N(0, σ²C²/share)`` to its clipped update (``share``
    = n, or ``min_honest`` when smaller), so one contribution carries σ/√share, the
    aggregate σ·√(n/share), and the aggregate less one client's own share
    σ·√((n-1)/share); the sensitivity of any of them to one client's update is C.
    """
    if view == "per_client":
        return sigma / math.sqrt(share)
    if view == "aggregate":
        return sigma * math.sqrt(n / share)
    if n < 2:
        return None  # the client's own contribution only: nothing about another client
    return sigma * math.sqrt((n - 1) / share)


def _weights_revealed(entry: dict[str, Any]) -> bool:
    received = entry.get("coordinator_received") or {}
    return "weights" in received or "sum_weights" in received


def uncovered_releases(ledger: Any, covered: Callable[[dict[str, Any]], bool]) -> dict[str, int]:
    """``"op:tag" -> count`` of ledger operations whose values ``covered`` does not protect.

    Operations ``covered`` accepts still reveal their FedAvg weights (the clients' cell
    counts: each client's to a non-private coordinator, their sum otherwise) as they are:
    counted as ``"op:tag:weights"``.
    """
    out: dict[str, int] = {}
    for e in ledger_entries(ledger):
        key = f"{e['op']}:{e['tag']}"
        if covered(e):
            if not _weights_revealed(e):
                continue
            key += ":weights"
        out[key] = out.get(key, 0) + 1
    return out


def _gaussian_roles(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    from smpc.mechanisms.gaussian import GaussianDP

    out = []
    for rec in entry.get("mechanisms") or []:
        if rec.get("name") != GaussianDP.name:
            continue
        mech = GaussianDP(**{k: v for k, v in rec.items() if k != "name"})
        out.append((mech.role(entry["op"], entry["tag"]), rec))
    return out


def _gaussian_covers(entry: dict[str, Any]) -> bool:
    return any(role in ("state", "metrics", "suppress") for role, _ in _gaussian_roles(entry))


def mechanism_seed(simulated: bool | None, seed: int | None) -> int | None:
    """The seed of a run's mechanisms (``None``: fresh OS entropy).

    Under DP fresh entropy unless the DP is ``simulated``; the run seed otherwise (no DP:
    research mechanisms, reproducible). ``simulated``: ``None`` without DP. Noise from the run seed could be regenerated from
    run.json and subtracted, so a DP run never uses it unless it says it is simulated.
    """
    if simulated is not None and not simulated:
        return None
    return None if seed is None else int(seed)


def client_level_from_ledger(
    ledger: Any,
    delta: float,
    *,
    accountant: Accountant = "rdp",
    observer: str = "output",
    unit: Unit = "client",
) -> LedgerAccount:
    """ε of the ``gaussian`` mechanism's releases recorded in ``ledger``, for ``observer``.

    Every ledger entry lists the mechanisms applied and their parameters, the number of
    clients, whether it was private and the computation parties, so the releases are
    counted from what actually happened (rounds, noised metrics, clients per operation),
    not from a config. Each noised operation is one Gaussian release with every client
    of the operation taking part (sampling rate 1); releases compose (``dp_accounting``).

    Each client added ``N(0, σ²C²/m)``, m the operation's clients (or ``min_honest`` if
    smaller), so the noise multiplier depends on what the observer received
    (:data:`OBSERVER_RECEIVES`): σ·√(n/m) on an aggregate of n contributions (σ without
    ``min_honest``); σ/√m on one client's contribution (a coordinator or a party where an
    operation was not private, or a coalition of as many parties as there are);
    σ·√((n-1)/m) for a client, which subtracts its own share. Fewer clients in an
    operation (clients dropped) leave less noise for a client (and for everyone under
    ``min_honest``): the per-operation count is used.

    Parameters
    ----------
    ledger
        An :class:`smpc.Ledger` or its ``to_dict()`` form (e.g. run.json's ``ledger``).
    delta
        δ of the guarantee.
    accountant
        ``"rdp"`` or ``"pld"``.
    observer
        One of :data:`LEDGER_OBSERVERS`.
    unit
        ``"client"``: the mechanism's zero-out relation (one client's clipped update
        present or replaced by zero: sensitivity C). ``"cell"``: the bound it gives one
        cell of a client (a cell added, removed or replaced moves that client's clipped
        update anywhere in the ball of radius C: sensitivity 2C, so every multiplier is
        halved; used by :func:`joint_cell_epsilon`).

    Raises
    ------
    FedscInputError
        Unknown observer or unit, or a ledger entry without ``n_clients``.
    """
    if observer not in LEDGER_OBSERVERS:
        raise FedscInputError(
            f"observer must be one of {LEDGER_OBSERVERS}, got {observer!r}; the ledger "
            "states what each of these received, and no other."
        )
    if unit not in ("client", "cell"):
        raise FedscInputError(f"unit must be 'client' or 'cell', got {unit!r}.")
    _check_args(0.0, 0, 1.0, delta)
    entries = ledger_entries(ledger)
    uncovered = uncovered_releases(entries, _gaussian_covers)
    if observer in _COALITION and not _has_parties(entries):
        # no computation party took part (plaintext): nothing to account for it
        return LedgerAccount(math.nan, float(delta), {}, uncovered, observer, unit, False, {})
    releases: dict[float, int] = {}
    views: dict[str, int] = {}
    for k, e in enumerate(entries):
        for role, rec in _gaussian_roles(e):
            if role not in ("state", "metrics"):
                continue
            sigma = float(rec["noise_multiplier"])
            if sigma <= 0:
                releases[0.0] = releases.get(0.0, 0) + 1
                continue
            if e.get("n_clients") is None:
                raise FedscInputError(
                    f"ledger entry {k} ({e['op']}:{e['tag']}) records no n_clients: the "
                    "noise each client added (sigma^2 C^2 / n) cannot be stated; pass the "
                    "ledger smpc wrote (Ledger.to_dict(), run.json's ledger)."
                )
            n = int(e["n_clients"])
            honest = rec.get("min_honest")
            share = n if honest is None else min(int(honest), n)
            view = _view(observer, e)
            m = _multiplier(view, sigma, n, share)
            if m is None:
                continue
            m = m / 2 if unit == "cell" else m
            releases[m] = releases.get(m, 0) + 1
            views[view] = views.get(view, 0) + 1
    # the weights are public under the relation (listed, not counted against it)
    unnoised = [k for k in uncovered if not k.endswith(":weights")]
    if any(s <= 0 for s in releases) or (not releases and unnoised):
        # a value revealed without noise has no finite guarantee (never 0: that would
        # read as "perfectly private")
        eps = math.inf
    elif not releases:
        eps = 0.0  # nothing revealed at all
    else:
        acc = _make_accountant(accountant)
        for s, count in sorted(releases.items()):
            acc.compose(dp_event(s, count))
        eps = float(acc.get_epsilon(delta))
    return LedgerAccount(eps, float(delta), releases, uncovered, observer, unit, True, views)


def in_dp_sgd_rounds(entry: dict[str, Any]) -> bool:
    """Whether DP-SGD covers an operation: a round's state aggregation (not its metrics).

    Everything a client releases from its DP-SGD-trained model in a round is
    post-processing of it; the engine scopes those aggregations ``(round, strategy tag)``
    and the un-noised losses ``(round, "metrics")``; the correction and preprocessing run
    outside rounds.
    """
    return entry.get("round") is not None and entry.get("tag") != _METRICS_TAG


def joint_cell_epsilon(
    dp_sgd_epsilon: float | None,
    ledger: Any,
    delta: float,
    *,
    accountant: Accountant = "rdp",
    observer: str = "output",
) -> float:
    """Cell-level ε against ``observer`` of a run with DP-SGD and/or the ``gaussian`` mechanism.

    Both bound the same privacy loss of one cell: DP-SGD's ``dp_sgd_epsilon`` (every
    observer: the clients release post-processing of their DP-SGD-trained states), and the
    client-level mechanism's releases at half their multiplier (a changed cell moves its
    client's clipped update by at most 2C; :func:`client_level_from_ledger` with
    ``unit="cell"``). A view that is (ε₁, δ)-DP and (ε₂, δ)-DP is (min(ε₁, ε₂), δ)-DP, so
    the smaller holds, at the same δ (pass DP-SGD's). DP-SGD's bound counts only when every
    noised release lies in its rounds (:func:`in_dp_sgd_rounds`); noised metrics, which it
    does not cover, leave the mechanism's bound alone. Neither covers the ledger's
    ``uncovered`` operations.

    Parameters
    ----------
    dp_sgd_epsilon
        DP-SGD's cell-level ε at ``delta`` (largest over clients); ``None`` without DP-SGD.
    ledger, delta, accountant, observer
        As in :func:`client_level_from_ledger`.

    Returns
    -------
    ε; ∞ when neither bounds this observer's view; NaN when the observer took no part.
    """
    bound = client_level_from_ledger(
        ledger, delta, accountant=accountant, observer=observer, unit="cell"
    )
    if not bound.applicable:
        return math.nan
    from_mechanism = bound.epsilon if bound.releases else math.inf
    if dp_sgd_epsilon is None:
        return from_mechanism
    outside = [
        e
        for e in ledger_entries(ledger)
        if not in_dp_sgd_rounds(e)
        and any(role in ("state", "metrics") for role, _ in _gaussian_roles(e))
    ]
    if outside:
        return from_mechanism
    return min(float(dp_sgd_epsilon), from_mechanism)


#: ``delta_check`` threshold: δ at most 1/(DELTA_FACTOR · n).
DELTA_FACTOR = 10


class DeltaWarning(UserWarning):
    """δ is below 1/n (accepted) but not well below it (see :func:`delta_check`)."""


def delta_check(delta: float, n: int, unit: str) -> str | None:
    """``None`` if δ ≤ 1/(10 n) for the n units protected, else a warning naming the fix.

    Policy: δ ≥ 1/n is refused (:meth:`DPConfig.validate_for`): the mechanism that
    publishes one unit's data at random meets it. Between 1/(10 n) and 1/n it is accepted
    with this warning: δ should be much smaller than 1/n (Dwork & Roth 2014, §2.3, "δ less
    than the inverse of any polynomial in the size of the database"), and the mechanism
    that publishes each unit's data with probability δ is (0, δ)-DP while exposing n·δ
    units in expectation, so at δ ≤ 1/(10 n) that is at most 0.1 unit. Not a refusal:
    with a handful of clients (n = 3 to 5) 1/(10 n) is 0.02 to 0.03, and the small
    federations studied here may trade that for less noise, in the open.
    """
    limit = 1.0 / (DELTA_FACTOR * n)
    if delta <= limit:
        return None
    return (
        f"delta={delta:g} is below 1/n = {1.0 / n:.3g} but not well below it for the n={n} "
        f"{unit} protected: a mechanism that publishes each unit's data with probability "
        f"delta meets it and exposes n*delta = {n * delta:.2g} of them in expectation; use "
        f"delta <= 1/({DELTA_FACTOR} n) = {limit:.3g}, e.g. {_suggest_delta(n):.0e}."
    )
