"""Differential-privacy accounting: ε from a maintained accountant, never a hand formula.

Every ε here comes from Google's ``dp_accounting`` (0.6.0): a Rényi-DP accountant
(:class:`dp_accounting.rdp.RdpAccountant`, the default) or a privacy-loss-distribution
accountant (:class:`dp_accounting.pld.PLDAccountant`, tighter), both for the
add-or-remove-one neighbouring relation. A run of ``steps`` releases of the
(subsampled) Gaussian mechanism with noise multiplier σ and Poisson sampling rate q is
the event ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)`` (``q = 1``: plain
``Gaussian(σ)``). The inverse (σ for a target ε) is the library's
:func:`dp_accounting.calibrate_dp_mechanism`.

Two granularities use the same functions (docs/dp.md):

- **client-level** (DP-FedAvg, the ``gaussian`` mechanism of :mod:`smpc.mechanisms`):
  one release per round per protected aggregate, every client in every round (q = 1);
  the unit protected is a whole client, so δ must be below 1/(number of clients);
- **cell-level** (DP-SGD, :mod:`fedsc.methods.dp_sgd`): one release per local step,
  q = expected batch / training cells of the client; the unit is one cell, δ < 1/cells.

σ = 0 (no noise) gives ε = ∞: the mechanisms are then the identity and nothing is claimed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import dp_accounting  # type: ignore[import-untyped]
from dp_accounting import pld, rdp

from fedsc.errors import FedscInputError

__all__ = [
    "ACCOUNTANTS",
    "LEDGER_OBSERVERS",
    "DPConfig",
    "LedgerAccount",
    "client_level_epsilon",
    "client_level_from_ledger",
    "dp_event",
    "dp_record",
    "epsilon",
    "noise_multiplier_for",
]

Accountant = Literal["rdp", "pld"]
Level = Literal["client", "cell"]

#: Accountant names accepted by :func:`epsilon` and :class:`DPConfig`.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")

#: Upper end of the σ search in :func:`noise_multiplier_for`.
_MAX_SIGMA = 1e4


def _make_accountant(name: str) -> dp_accounting.PrivacyAccountant:
    if name == "rdp":
        return rdp.RdpAccountant()  # default orders, add-or-remove-one
    if name == "pld":
        return pld.PLDAccountant()
    raise FedscInputError(f"unknown accountant {name!r}; choose one of {list(ACCOUNTANTS)}.")


def dp_event(noise_multiplier: float, steps: int, sampling_rate: float = 1.0) -> Any:
    """The ``dp_accounting`` event of ``steps`` (Poisson-subsampled) Gaussian releases."""
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
    """
    _check_args(noise_multiplier, steps, sampling_rate, delta)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _make_accountant(accountant)
    acc.compose(dp_event(noise_multiplier, steps, sampling_rate))
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    steps: int,
    sampling_rate: float = 1.0,
    delta: float = 1e-5,
    *,
    accountant: Accountant = "rdp",
    tol: float = 1e-4,
) -> float:
    """The smallest σ whose ε (same accountant) is at most ``target_epsilon``.

    Uses :func:`dp_accounting.calibrate_dp_mechanism` (Brent's method on the accountant),
    so ``epsilon(noise_multiplier_for(e, ...), ...) <= e`` up to ``tol`` in σ.
    """
    _check_args(0.0, steps, sampling_rate, delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise FedscInputError(
            f"target_epsilon must be positive and finite, got {target_epsilon!r}; "
            "for no privacy guarantee leave DP off instead."
        )
    if steps == 0:
        return 0.0
    try:
        sigma = dp_accounting.calibrate_dp_mechanism(
            lambda: _make_accountant(accountant),
            lambda s: dp_event(s, steps, sampling_rate),
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=tol,
        )
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as err:
        raise FedscInputError(
            f"no noise multiplier reaches epsilon={target_epsilon} at delta={delta} over "
            f"{steps} step(s) at sampling rate {sampling_rate}: {err}; raise the target "
            "epsilon or delta, or take fewer steps."
        ) from None
    sigma = float(sigma)
    if sigma > _MAX_SIGMA:  # pragma: no cover - absurd targets only
        raise FedscInputError(f"target_epsilon={target_epsilon} needs sigma={sigma:.3g}.")
    return sigma


@dataclass(frozen=True)
class DPConfig:
    """Settings of one DP guarantee (client-level DP-FedAvg or cell-level DP-SGD).

    Attributes
    ----------
    noise_multiplier
        σ > 0: Gaussian noise std divided by the clipping bound (the L2 sensitivity).
        ``None``: derive it from ``target_epsilon`` with :meth:`resolve`.
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
        ``"rdp"`` (default) or ``"pld"``.
    level
        ``"client"`` (a whole client is the unit protected) or ``"cell"``.
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
    accountant: Accountant = "rdp"
    level: Level = "client"
    simulated: bool = False

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
        elif not (math.isfinite(s) and s > 0):
            raise FedscInputError(
                f"DP config: noise_multiplier must be > 0, got {s!r}; use e.g. 1.0 (larger "
                "is more private), or drop the dp block (dp: null) to turn DP off."
            )
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise FedscInputError(
                f"DP config: clip must be > 0, got {self.clip!r}; it bounds each "
                f"{'client update' if self.level == 'client' else 'per-cell gradient'} "
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
        if self.accountant not in ACCOUNTANTS:
            raise FedscInputError(
                f"DP config: unknown accountant {self.accountant!r}; choose one of "
                f"{list(ACCOUNTANTS)}."
            )
        if self.level not in ("client", "cell"):
            raise FedscInputError(
                f"DP config: level must be 'client' or 'cell', got {self.level!r}."
            )

    def validate_for(self, n: int) -> None:
        """Refuse δ >= 1/n, n being the number of protected units (clients or cells).

        With δ >= 1/n a mechanism that publishes one unit's data at random satisfies the
        guarantee, so it means nothing.
        """
        unit = "clients" if self.level == "client" else "cells"
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
                self.target_epsilon, steps, sampling_rate, self.delta, accountant=self.accountant
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
        """ε of ``steps`` releases at ``sampling_rate`` (σ must be set; see :meth:`resolve`)."""
        if self.noise_multiplier is None:
            raise FedscInputError(
                "DP config: noise_multiplier is not set yet; call resolve(steps, "
                "sampling_rate) first to calibrate it to target_epsilon."
            )
        return epsilon(
            self.noise_multiplier, steps, sampling_rate, self.delta, accountant=self.accountant
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
NOISE_FRESH = "fresh OS entropy (not recorded)"
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
        "dp_accountant": f"dp_accounting {config.accountant.upper()} (add-or-remove-one)",
        "dp_noise": NOISE_SIMULATED if config.simulated else NOISE_FRESH,
    }


@dataclass(frozen=True)
class LedgerAccount:
    """Client-level DP read off an aggregator's ledger (:func:`client_level_from_ledger`).

    Attributes
    ----------
    epsilon
        ε of all noised releases composed (0 if nothing was released under DP). It
        covers the noised releases only: see ``uncovered``.
    delta
        The δ it holds at.
    releases
        Number of Gaussian releases composed, per noise multiplier.
    uncovered
        ``"op:tag" -> count`` of operations that revealed an aggregate without the
        ``gaussian`` mechanism covering it (outside the guarantee; e.g. FedscGen's
        ``correction/*`` steps, ``argmax``).
    """

    epsilon: float
    delta: float
    releases: dict[float, int]
    uncovered: dict[str, int]


#: Observers :func:`client_level_from_ledger` accounts for.
LEDGER_OBSERVERS = ("output", "coordinator")


def client_level_from_ledger(
    ledger: Any, delta: float, *, accountant: Accountant = "rdp", observer: str = "output"
) -> LedgerAccount:
    """ε of the ``gaussian`` mechanism's releases recorded in ``ledger``, for ``observer``.

    Every ledger entry lists the mechanisms applied and their parameters, so the releases
    are counted from what actually happened (rounds, noised metrics), not from a config.
    Each noised operation is one Gaussian release with every client taking part (sampling
    rate 1); releases compose.

    ``observer="output"``: whoever sees only the aggregates (the model, a secure-aggregation
    coordinator): noise multiplier σ. ``observer="coordinator"``: the coordinator sees each
    client's noised contribution wherever an operation was not private (plaintext, debug
    mode); each client added only its share of the noise, N(0, σ²C²/m) with m the clients
    of the operation (or ``min_honest``), so the multiplier it sees is σ/√m.

    Parameters
    ----------
    ledger
        An :class:`smpc.Ledger` or its ``to_dict()`` form (e.g. run.json's ``ledger``).
    delta
        δ of the guarantee.
    accountant
        ``"rdp"`` or ``"pld"``.
    observer
        ``"output"`` or ``"coordinator"`` (see above).
    """
    from smpc.mechanisms.gaussian import GaussianDP

    if observer not in LEDGER_OBSERVERS:
        raise ValueError(f"observer must be one of {LEDGER_OBSERVERS}, got {observer!r}.")

    entries = ledger["entries"] if isinstance(ledger, dict) else ledger.to_dict()["entries"]
    releases: dict[float, int] = {}
    uncovered: dict[str, int] = {}
    for e in entries:
        covered = False
        for rec in e.get("mechanisms") or []:
            if rec.get("name") != GaussianDP.name:
                continue
            mech = GaussianDP(**{k: v for k, v in rec.items() if k != "name"})
            role = mech.role(e["op"], e["tag"])
            if role in ("state", "metrics"):
                sigma = float(rec["noise_multiplier"])
                if observer == "coordinator" and not e.get("private", False):
                    n = int(e.get("n_clients") or 1)
                    share = n if rec.get("min_honest") is None else min(rec["min_honest"], n)
                    sigma /= math.sqrt(share)  # one client's part of the noise
                releases[sigma] = releases.get(sigma, 0) + 1
                covered = True
            elif role == "suppress":
                covered = True
        if not covered:
            key = f"{e['op']}:{e['tag']}"
            uncovered[key] = uncovered.get(key, 0) + 1
    _check_args(0.0, 0, 1.0, delta)
    if any(sigma <= 0 for sigma in releases) or (not releases and uncovered):
        # a value revealed without noise has no finite guarantee (never 0: that would
        # read as "perfectly private")
        eps = math.inf
    elif not releases:
        eps = 0.0  # nothing revealed at all
    else:
        acc = _make_accountant(accountant)
        for sigma, count in sorted(releases.items()):
            acc.compose(dp_event(sigma, count))
        eps = float(acc.get_epsilon(delta))
    return LedgerAccount(eps, float(delta), releases, uncovered)
