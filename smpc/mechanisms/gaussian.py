"""Client-level differential privacy for federated averaging (DP-FedAvg), distributed noise.

DP-FedAvg (McMahan et al., ICLR 2018): each client clips its *update* (its contribution
minus the broadcast reference) to L2 norm ``C`` and the aggregate carries Gaussian noise
of standard deviation ``σ·C`` relative to its L2 sensitivity. Here the noise is added
*distributedly*: each of the K clients adds ``N(0, σ²C²/K)`` to its own clipped update
before secret sharing, so the revealed sum carries ``N(0, σ²C²)`` and no single party
(coordinator or computation party) ever sees an un-noised aggregate.

Neighbouring relation: two federations differ in one client's update being present or
replaced by zero ("zero-out", Kairouz et al., ICML 2021); the number of clients K and the
aggregation weights are public (they are plaintext inputs of ``weighted_mean``). Under it
the sum of clipped updates has L2 sensitivity ``C``, so one release is the Gaussian
mechanism with noise multiplier σ, and R rounds with every client in every round compose
as ``SelfComposed(Gaussian(σ), R)`` (sampling rate 1): :mod:`fedsc.privacy.accounting`.

FedAvg's weighted mean ``Σ w_c x_c / Σ w_c`` (``weighting``):

- ``"uniform"`` (default; McMahan et al.'s estimator with equal weights): the released
  value is the *unweighted* mean ``r + Σ_c (ũ_c + n_c) / K`` whatever weights the caller
  passes. Client c shares ``r + (ũ_c + n_c) / w_c`` (its own weight only); the backend
  forms ``Σ w_c x_c / W = r + Σ_c (ũ_c + n_c) / W`` and the coordinator rescales the
  update part by the public ``W / K``. Sensitivity of the mean ``C / K``, noise std
  ``σ C / K``.
- ``"weighted"``: keep the caller's weights, bounded by a public ``max_weight`` that each
  client checks for itself. The weighted sum ``Σ w_c ũ_c`` has sensitivity
  ``max_weight · C``; client c adds noise of std ``σ C (max_weight / w_c) / √K``, so
  ``Σ w_c n_c`` has std ``σ · max_weight · C`` whatever the weights. Correct for every
  weight vector, but small clients' noise dominates: use it with capped weights
  (e.g. ``w_c = min(n_c / ŵ, 1)`` and ``max_weight = 1``, McMahan et al.).

Operations covered: ``weighted_mean`` and ``sum`` whose ledger tag is in ``tags`` (the
model-state aggregations of the engine's strategies). The per-round metrics (tag
``"metrics"``) are a function of the clients' data too (``metrics``): ``"suppress"``
(default) makes every client share zeros, so nothing is revealed and the history reads 0;
``"noise"`` clips the metric vector to ``metrics_clip`` and noises it like a state (one more
Gaussian release per round for the accountant); ``"reveal"`` passes them through
(outside the guarantee). ``gather`` (every contribution revealed) is refused (σ = 0 too).
Other tags (e.g. FedscGen's ``correction/*`` steps) and ``argmax`` pass through untouched
and are outside the guarantee.

Caveats (docs/dp.md):

- collusion: colluding clients know their own noise and can subtract it; with t honest
  clients the noise left on the honest clients' sum has variance ``σ²C²·t/K``.
  ``min_honest=t`` makes every client add ``N(0, σ²C²/t)`` instead, so the guarantee
  holds against any K − t colluding clients (at K/t times the noise variance);
- the noise comes from the client's random source in
  :class:`~smpc.mechanisms.base.ClientContext`: the OS CSPRNG
  (:class:`~smpc.mechanisms.secure_random.SecureRandom`) with ``mechanism_seed=None``
  (the default; nothing to record or replay), numpy PCG64 seeded per operation and
  client with an integer ``mechanism_seed`` (reproducible, not private);
- floating-point Gaussian samples leak through their low-order bits (Mironov, CCS 2012);
  the discrete Gaussian on the integer ring of secure aggregation (Canonne et al.,
  NeurIPS 2020; Kairouz et al., ICML 2021) is the principled fix (future work).

``noise_multiplier=0`` is the control of a DP-vs-no-DP comparison (ε = ∞, never
private): the same pipeline (clipping, uniform weighting and its rescaling, metrics
suppressed, ``gather`` refused, one ledger record per covered operation) with no noise,
so that comparing it with σ > 0 isolates the noise. DP off is no mechanism at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from typing_extensions import override

from smpc.mechanisms.base import ClientContext, Mechanism, ResultContext

#: Ledger tag of the engine's metrics aggregation.
METRICS_TAG = "metrics"
#: Default tags of model-state aggregations (the engine's FedAvg and FedAvgM strategies).
STATE_TAGS: tuple[str, ...] = ("fedavg", "fedavgm")


class GaussianDP(Mechanism):
    """Clip each client's update to L2 norm ``clip`` and add its share of Gaussian noise.

    Parameters
    ----------
    noise_multiplier
        σ >= 0: the aggregate's noise std divided by its L2 sensitivity. 0: the same
        clipping and weighting without noise (the DP-pipeline control, ε = ∞).
    clip
        C > 0: L2 bound on each client's update ``x - reference`` (whole flat contribution).
    weighting
        ``"uniform"`` (default) or ``"weighted"`` (module docstring).
    max_weight
        Public bound on any client's weight (``"weighted"`` only; required there).
    tags
        Ledger tags of the state aggregations to protect; ``None``: every tag except
        ``"metrics"`` (including operations outside any scope).
    metrics
        ``"suppress"`` (default), ``"noise"`` or ``"reveal"``: what happens to the
        aggregation tagged ``"metrics"``.
    metrics_clip
        L2 bound of a client's metric vector (``metrics="noise"`` only; required there).
    min_honest
        Number of clients assumed not to collude (t >= 1): each client's noise variance
        is ``σ²C²/min(t, K)``. ``None``: t = K (no collusion tolerated).
    """

    name = "gaussian"
    ops = frozenset({"weighted_mean", "sum", "gather"})

    def __init__(
        self,
        noise_multiplier: float,
        clip: float,
        *,
        weighting: str = "uniform",
        max_weight: float | None = None,
        tags: Sequence[str] | None = STATE_TAGS,
        metrics: str = "suppress",
        metrics_clip: float | None = None,
        min_honest: int | None = None,
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(
                f"gaussian: noise_multiplier must be >= 0 and finite, got {noise_multiplier!r} "
                "(0 keeps clipping and weighting without noise: the control, epsilon = inf)."
            )
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(
                f"gaussian: clip must be positive and finite, got {clip!r}; it bounds each "
                "client's update in L2 norm (e.g. 1.0)."
            )
        if weighting not in ("uniform", "weighted"):
            raise ValueError(
                f"gaussian: weighting must be 'uniform' or 'weighted', got {weighting!r}."
            )
        if weighting == "weighted":
            if max_weight is None or not (math.isfinite(max_weight) and max_weight > 0):
                raise ValueError(
                    f"gaussian: weighting='weighted' needs a public max_weight > 0 bounding "
                    f"every client's weight, got {max_weight!r}; e.g. cap the weights at 1 "
                    "(w = min(n / n_cap, 1)) and pass max_weight=1, or use "
                    "weighting='uniform'."
                )
        elif max_weight is not None:
            raise ValueError("gaussian: max_weight is only used with weighting='weighted'.")
        if metrics not in ("suppress", "noise", "reveal"):
            raise ValueError(
                f"gaussian: metrics must be 'suppress', 'noise' or 'reveal', got {metrics!r}."
            )
        if metrics == "noise":
            if metrics_clip is None or not (math.isfinite(metrics_clip) and metrics_clip > 0):
                raise ValueError(
                    f"gaussian: metrics='noise' needs metrics_clip > 0 (the L2 bound of a "
                    f"client's metric vector), got {metrics_clip!r}."
                )
        elif metrics_clip is not None:
            raise ValueError("gaussian: metrics_clip is only used with metrics='noise'.")
        if min_honest is not None and (int(min_honest) != min_honest or min_honest < 1):
            raise ValueError(
                f"gaussian: min_honest must be an integer >= 1 (clients assumed not to "
                f"collude), got {min_honest!r}."
            )
        self.min_honest = None if min_honest is None else int(min_honest)
        self.noise_multiplier = float(noise_multiplier)
        self.clip = float(clip)
        self.weighting = weighting
        self.max_weight = None if max_weight is None else float(max_weight)
        self.tags: tuple[str, ...] | None = None if tags is None else tuple(str(t) for t in tags)
        self.metrics = metrics
        self.metrics_clip = None if metrics_clip is None else float(metrics_clip)

    # ----------------------------------------------------------------- what is covered
    @property
    def releases_per_round(self) -> int:
        """Gaussian releases per round the accountant must compose (states, noised metrics)."""
        return 2 if self.metrics == "noise" else 1

    def role(self, op: str, tag: str | None) -> str:
        """What the mechanism does to operation ``op`` under ledger tag ``tag``.

        ``"state"`` or ``"metrics"`` (clipped and noised: one Gaussian release),
        ``"suppress"`` (zeros shared, nothing revealed), ``"refuse"`` (``gather``) or
        ``"pass"`` (untouched: outside the guarantee).
        """
        if op == "gather":
            return "refuse"
        if tag == METRICS_TAG:
            return {"noise": "metrics", "suppress": "suppress", "reveal": "pass"}[self.metrics]
        if self.tags is None or tag in self.tags:
            return "state"
        return "pass"

    # ----------------------------------------------------------------- hooks
    @override
    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        role = self.role(ctx.op, ctx.tag)
        if role == "pass":
            return row
        if role == "refuse":
            raise ValueError(
                "gaussian: gather would reveal every client's contribution, which no "
                f"client-level DP guarantee covers (tag {ctx.tag!r}); use a strategy that "
                "aggregates with weighted_mean or sum (e.g. fedavg) under DP."
            )
        if role == "suppress":
            return np.zeros_like(row)
        bound = self.clip if role == "state" else self.metrics_clip
        assert bound is not None
        base = 0.0 if (role == "metrics" or ctx.reference is None) else ctx.reference
        update = row - base
        norm = float(np.linalg.norm(update))
        if norm > bound:
            update = update * (bound / norm)
        share = ctx.n_clients if self.min_honest is None else min(self.min_honest, ctx.n_clients)
        std = self.noise_multiplier * bound / math.sqrt(share)
        if ctx.op == "weighted_mean":
            w = ctx.weight
            assert w is not None
            if self.weighting == "uniform":
                return base + (update + _noise(std, row.shape, ctx)) / w
            assert self.max_weight is not None
            if w > self.max_weight:
                raise ValueError(
                    f"gaussian: client {ctx.client} has weight {w} above the public "
                    f"max_weight={self.max_weight}; cap the weights (w = min(w, max_weight)) "
                    "or raise max_weight (the noise grows with it)."
                )
            std = std * self.max_weight / w
        return base + update + _noise(std, row.shape, ctx)

    @override
    def transform_result(self, result: np.ndarray, ctx: ResultContext) -> np.ndarray:
        role = self.role(ctx.op, ctx.tag)
        if role == "suppress":
            return np.zeros_like(result)
        if role not in ("state", "metrics") or ctx.op != "weighted_mean":
            return result
        if self.weighting != "uniform":
            return result
        # Σ w_c x̂_c / W = r + Σ (ũ_c + n_c) / W: rescale the update part to the mean over K.
        assert ctx.total_weight is not None
        base = 0.0 if (role == "metrics" or ctx.reference is None) else ctx.reference
        return base + (result - base) * (ctx.total_weight / ctx.n_clients)

    @override
    def params(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "weighting": self.weighting,
            "max_weight": self.max_weight,
            "tags": None if self.tags is None else list(self.tags),
            "metrics": self.metrics,
            "metrics_clip": self.metrics_clip,
            "min_honest": self.min_honest,
        }


def _noise(std: float, shape: tuple[int, ...], ctx: ClientContext) -> np.ndarray | float:
    """``N(0, std²)`` per value from the client's own source; 0 (no draw) at σ = 0."""
    if std == 0.0:
        return 0.0
    return std * np.asarray(ctx.generator.standard_normal(shape))
