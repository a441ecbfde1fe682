"""Attack (b): what a recovered scBatchProx row gives away about the client's cells.

Client ``b``'s local loss (docs/algorithms.md#scbatchprox) is, per embedding dimension
``j`` and minibatch ``B``,

    (gamma_j - 1)^2 m2_B + 2 (gamma_j - 1) beta_j m1_B + beta_j^2
      + mu ((gamma_j - gamma_j^t)^2 + (beta_j - beta_j^t)^2) + lam (gamma_j^2 + beta_j^2)

with ``m1_B``, ``m2_B`` the minibatch mean and second moment of dimension ``j``. The
gradient, hence every Adam step, depends on the cells only through these two numbers per
dimension, and dimensions do not interact (Adam is per coordinate). The training
procedure is public (lr, epochs, mu, lam, batch size, Adam's betas and eps; the number of
steps follows from the cell count ``w_b``), and the start of every round is the previous
global row. So the trained rows are a known function of ``(m1_j, m2_j)``, and the
attacker fits them: simulate the public local training for candidate moments and match
the rows recovered by attack (a) in every round (grid search, then Levenberg-Marquardt,
per client and dimension).

What is identifiable:

- Adam normalises the step: a step moves a coordinate by about ``lr`` whatever the
  gradient's size, so a single step reveals only the gradient's sign. The moments are
  identified through how consecutive gradients *differ* within a round (Adam's second
  step depends on ``g_2 / g_1``) and through the sign pattern over rounds; with few steps
  per round this is informative because the rows stay near the identity, where the
  gradient is small and moves a lot relative to its size.
- With more cells than one minibatch, each step sees a random minibatch (shuffled with
  the client's private generator): the attack then fits the training split's moments
  as if every minibatch had them, an approximation. When the training split fits in one
  minibatch (the bundled pancreas data: 90 training cells, batch size 256) every step
  sees exactly the split's moments and the model is exact.
- The moments are those of the client's *training split* (90 % of its cells).
- Under clipping / DP noise the rows are perturbed and the fit degrades accordingly.

Chance level: the guess from public or population knowledge only, the pooled moments of
all clients' training cells (generous: it assumes the attacker knows them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsc.privacy.attacks import COLUMNS
from fedsc.privacy.scbatchprox_rows import TAG, recover_rows
from fedsc.privacy.views import ObserverView

if TYPE_CHECKING:
    from fedsc.privacy.attacks import Truth

ATTACK = "scbatchprox_moments"


@dataclass(frozen=True)
class ClientMoments:
    """Per-client, per-dimension mean and second moment of the training cells.

    Attributes
    ----------
    mean, second
        ``(K, d)``: client ``b``'s mean and second moment of each dimension.
    n
        ``(K,)`` cells per client.
    """

    mean: np.ndarray
    second: np.ndarray
    n: np.ndarray

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """The pooled (all clients' cells) mean and second moment, ``(d,)`` each."""
        w = self.n / self.n.sum()
        return w @ self.mean, w @ self.second


def client_moments(
    z: np.ndarray,
    batch_labels: Sequence[str] | np.ndarray,
    config: Mapping[str, Any],
    seed: int,
    *,
    batches: Sequence[str] | None = None,
    training_only: bool = True,
) -> ClientMoments:
    """The truth attack (b) is scored against (evaluation only).

    Parameters
    ----------
    z, batch_labels
        The embedding and batch labels scBatchProx was fitted on.
    config
        The scBatchProx config (``train_fraction``).
    seed
        The run seed (fixes the training splits).
    batches
        Client order (default: sorted batch names, as :meth:`ScBatchProx.fit`).
    training_only
        Moments of the training split (what the rows depend on) or of all the client's
        cells.
    """
    from fedsc.methods.scbatchprox import training_split

    labels = np.asarray(batch_labels).astype(str)
    batches = list(batches) if batches is not None else sorted(set(labels))
    z = np.asarray(z, dtype=np.float64)
    means, seconds, ns = [], [], []
    for c, b in enumerate(batches):
        cells = np.flatnonzero(labels == b)
        if training_only:
            cells = cells[training_split(len(cells), float(config["train_fraction"]), seed, c)]
        zc = z[cells]
        means.append(zc.mean(0))
        seconds.append((zc * zc).mean(0))
        ns.append(len(cells))
    return ClientMoments(np.array(means), np.array(seconds), np.array(ns, dtype=np.float64))


def simulate_round(
    gamma0: np.ndarray,
    beta0: np.ndarray,
    m1: np.ndarray,
    m2: np.ndarray,
    n_steps: int,
    config: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """One client's local training of one round, for candidate moments (element-wise).

    Mirrors :meth:`fedsc.methods.scbatchprox.ScBatchProxFederation.local_updates` with
    every minibatch having moments ``(m1, m2)``. All arrays broadcast together.

    Parameters
    ----------
    gamma0, beta0
        The round's start (the previous global row).
    m1, m2
        Candidate mean and second moment.
    n_steps
        Adam steps (``local_epochs * ceil(n_train / batch_size)``).
    config
        The public scBatchProx config (``lr, mu, lam, adam_betas, adam_eps``).

    Returns
    -------
    The row ``(gamma, beta)`` after the round.
    """
    lr, mu, lam = float(config["lr"]), float(config["mu"]), float(config["lam"])
    b1, b2 = (float(x) for x in config["adam_betas"])
    eps = float(config["adam_eps"])
    gam = np.asarray(gamma0, dtype=np.float64) + 0.0 * m1
    bet = np.asarray(beta0, dtype=np.float64) + 0.0 * m1
    g0, be0 = gam.copy(), bet.copy()
    mg = np.zeros_like(gam)
    vg = np.zeros_like(gam)
    mb = np.zeros_like(gam)
    vb = np.zeros_like(gam)
    for t in range(1, n_steps + 1):
        gm1 = gam - 1.0
        grad_g = 2.0 * (gm1 * m2 + bet * m1) + 2.0 * mu * (gam - g0) + 2.0 * lam * gam
        grad_b = 2.0 * gm1 * m1 + 2.0 * bet + 2.0 * mu * (bet - be0) + 2.0 * lam * bet
        mg = b1 * mg + (1 - b1) * grad_g
        vg = b2 * vg + (1 - b2) * grad_g * grad_g
        mb = b1 * mb + (1 - b1) * grad_b
        vb = b2 * vb + (1 - b2) * grad_b * grad_b
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        gam = gam - lr / bc1 * mg / (np.sqrt(vg) / np.sqrt(bc2) + eps)
        bet = bet - lr / bc1 * mb / (np.sqrt(vb) / np.sqrt(bc2) + eps)
    return gam, bet


def _residuals(
    m1: np.ndarray,
    m2: np.ndarray,
    starts: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    n_steps: int,
    config: Mapping[str, Any],
    unit: float,
) -> np.ndarray:
    """Residuals (last axis: rounds x {gamma, beta}) in units of ``lr``."""
    out = []
    for (g0, b0), (gt, bt) in zip(starts, targets, strict=True):
        g, b = simulate_round(g0, b0, m1, m2, n_steps, config)
        out.append((g - gt) / unit)
        out.append((b - bt) / unit)
    return np.stack(out, axis=-1)


def _grid(points: int = 56) -> tuple[np.ndarray, np.ndarray]:
    mags = np.logspace(-3, 2.5, points)
    m1 = np.concatenate([-mags[::-1], [0.0], mags])
    sd = np.logspace(-3, 2.5, points)
    a, s = np.meshgrid(m1, sd, indexing="ij")
    return a.ravel(), s.ravel()


def fit_moments(
    starts: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    n_steps: int,
    config: Mapping[str, Any],
    *,
    iterations: int = 40,
    grid_points: int = 56,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit one client's per-dimension moments to its recovered rows.

    Parameters
    ----------
    starts
        Per round, the start rows ``(gamma^t_b, beta^t_b)`` (``(d,)`` each).
    targets
        Per round, the recovered trained rows ``(gamma_b', beta_b')``.
    n_steps
        Adam steps per round.
    config
        The public scBatchProx config.
    iterations
        Levenberg-Marquardt iterations after the grid search.
    grid_points
        Grid points per half-axis of the search over ``(mean, sd)`` (log-spaced
        magnitudes 1e-3 .. 10^2.5).

    Returns
    -------
    ``(mean, second, rms)``: estimates per dimension and the fit's RMS residual (in units
    of ``lr``).
    """
    with np.errstate(all="ignore"):  # far-off candidates overflow; they lose the fit
        return _fit(starts, targets, n_steps, config, iterations, grid_points)


def _fit(
    starts: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    n_steps: int,
    config: Mapping[str, Any],
    iterations: int,
    grid_points: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    unit = float(config["lr"])
    d = starts[0][0].shape[0]
    ga, gs = _grid(grid_points)
    st = [(g[:, None], b[:, None]) for g, b in starts]
    tg = [(g[:, None], b[:, None]) for g, b in targets]
    res = _residuals(
        ga[None, :], ga[None, :] ** 2 + gs[None, :] ** 2, st, tg, n_steps, config, unit
    )
    best = np.argmin((res**2).sum(-1), axis=1)
    # parameters: p = (m1, log sd); m2 = m1^2 + sd^2 keeps m2 >= m1^2
    p = np.stack([ga[best], np.log(gs[best])], axis=1)
    damping = np.full(d, 1e-2)
    st1 = [(g, b) for g, b in starts]
    tg1 = [(g, b) for g, b in targets]

    def resid(q: np.ndarray) -> np.ndarray:
        return _residuals(
            q[:, 0], q[:, 0] ** 2 + np.exp(2 * q[:, 1]), st1, tg1, n_steps, config, unit
        )

    r = resid(p)
    cost = (r**2).sum(-1)
    for _ in range(iterations):
        h = np.stack([1e-6 * np.maximum(np.abs(p[:, 0]), 1e-3), np.full(d, 1e-6)], axis=1)
        jac = np.empty((*r.shape, 2))
        for k in range(2):
            dp = np.zeros_like(p)
            dp[:, k] = h[:, k]
            jac[..., k] = (resid(p + dp) - resid(p - dp)) / (2 * h[:, k : k + 1])
        jtj = np.einsum("dri,drj->dij", jac, jac)
        jtr = np.einsum("dri,dr->di", jac, r)
        a = jtj + damping[:, None, None] * (
            np.eye(2) * np.maximum(np.diagonal(jtj, 0, 1, 2), 1e-12)[:, None, :]
        )
        step = -np.linalg.solve(a, jtr[..., None])[..., 0]
        p_new = p + step
        r_new = resid(p_new)
        cost_new = (r_new**2).sum(-1)
        better = cost_new < cost
        p = np.where(better[:, None], p_new, p)
        r = np.where(better[:, None], r_new, r)
        cost = np.where(better, cost_new, cost)
        damping = np.where(better, damping / 3, damping * 4)
    rms = np.sqrt(cost / r.shape[-1])
    return p[:, 0], p[:, 0] ** 2 + np.exp(2 * np.clip(p[:, 1], -20.0, 10.0)), rms


def n_steps(n_train: float, config: Mapping[str, Any]) -> int:
    """Adam steps of one round for a client with ``n_train`` training cells."""
    batches = int(np.ceil(max(round(float(n_train)), 1) / int(config["batch_size"])))
    return int(config["local_epochs"]) * batches


def estimate_weights(
    view: ObserverView,
    config: Mapping[str, Any] | None = None,
    *,
    tag: str = TAG,
    dims: int = 8,
) -> np.ndarray:
    """Estimate every client's weight ``w_b`` (training cells) from ``W`` and the aggregates.

    With only ``W`` revealed, round ``t`` reveals ``(w_b / W) (theta_b' - theta_b^t)``
    exactly. For a candidate ``w_b`` the attacker rescales that update, derives the
    number of Adam steps, and fits the moments (:func:`fit_moments`) on the ``dims``
    dimensions that moved most; the median fit residual is smallest at the true count (it
    is 0 there up to rounding when every minibatch holds the whole training split). A
    log-spaced scan over ``1 .. W`` is zoomed until at most 160 integers remain, which are
    all tried (all candidates of a scan are fitted in one vectorised call).

    Parameters
    ----------
    view
        A view with the aggregates, the broadcast states and ``W`` (e.g. the crypten
        coordinator).
    config
        The public scBatchProx config (default: ``view.public["config"]``).
    tag
        Ledger tag of the state aggregation.
    dims
        Dimensions used for the search (fewer: faster).

    Returns
    -------
    ``(K,)`` estimated weights (integers as floats).
    """
    config = dict(config if config is not None else view.public["config"])
    key = (tag, dims, repr(sorted(config.items())))
    if _LAST_WEIGHTS and _LAST_WEIGHTS[0] is view and _LAST_WEIGHTS[1] == key:
        return _LAST_WEIGHTS[2].copy()
    rounds = recover_rows(view, tag=tag)
    if not rounds:
        raise ValueError(f"the {view.observer!r} view holds no aggregates to attack.")
    total = view.select(tag=tag, op="weighted_mean")[0].total_weight
    if total is None:
        raise ValueError("the view does not hold the total weight W.")
    k = rounds[0].gamma.shape[0]
    # Under the gaussian mechanism's uniform weighting the released mean is unweighted:
    # the scale of each update is known (K) and the count only sets the number of steps.
    known = rounds[0].weights_known
    out = np.empty(k)
    for b in range(k):
        # the revealed update (w_b / W) (theta_b' - theta_b^t), per round
        dg = [(r.gamma[b] - r.gamma_prev[b]) / r.scale[b] for r in rounds]
        db = [(r.beta[b] - r.beta_prev[b]) / r.scale[b] for r in rounds]
        moved = np.sum([np.abs(g) + np.abs(x) for g, x in zip(dg, db, strict=True)], axis=0)
        sel = np.argsort(-moved)[:dims]
        starts = [(r.gamma_prev[b][sel], r.beta_prev[b][sel]) for r in rounds]
        updates = [(g[sel], x[sel]) for g, x in zip(dg, db, strict=True)]
        fixed = float(rounds[0].scale[b]) if known else None
        out[b] = _search_count(starts, updates, float(total), k, config, fixed_scale=fixed)
    _LAST_WEIGHTS[:] = [view, key, out.copy()]
    return out


def _search_count(
    starts: Sequence[tuple[np.ndarray, np.ndarray]],
    updates: Sequence[tuple[np.ndarray, np.ndarray]],
    total: float,
    k: int,
    config: Mapping[str, Any],
    *,
    fixed_scale: float | None = None,
) -> int:
    """The count ``n`` whose rescaled updates ``(W / n) * update`` fit the model best.

    ``fixed_scale``: the updates' scale when it is known (the released mean's weights are
    public), so that a candidate count changes only the number of Adam steps; counts
    with equal steps then tie and the one nearest ``W / K`` is kept.
    """
    cache: dict[int, float] = {}
    d = len(starts[0][0])

    def evaluate(ns: np.ndarray) -> None:
        # candidates x dims independent problems, flattened into one fit per step count
        groups: dict[int, list[int]] = {}
        for n in (int(n) for n in ns if int(n) not in cache):
            groups.setdefault(n_steps(n, config), []).append(n)
        for steps, group in groups.items():
            per_n = total / np.asarray(group, dtype=np.float64)
            if fixed_scale is not None:
                per_n = np.full(len(group), fixed_scale)
            scale = np.repeat(per_n, d)
            tiled = [(np.tile(g0, len(group)), np.tile(b0, len(group))) for g0, b0 in starts]
            targets = [
                (g0 + scale * np.tile(ug, len(group)), b0 + scale * np.tile(ub, len(group)))
                for (g0, b0), (ug, ub) in zip(tiled, updates, strict=True)
            ]
            *_, rms = fit_moments(tiled, targets, steps, config, iterations=20, grid_points=20)
            for n, r in zip(group, rms.reshape(len(group), d), strict=True):
                cache[n] = float(np.median(r))

    def best(ns: list[int]) -> int:
        if fixed_scale is None:
            return min(ns, key=cache.__getitem__)
        # With the scale known, counts with the same number of steps fit equally well:
        # among them keep the one nearest the equal-share guess W / K.
        low = min(cache[n] for n in ns)
        tied = [n for n in ns if cache[n] <= low * (1 + 1e-9)]
        return min(tied, key=lambda n: abs(n - total / k))

    lo, hi = 1, max(int(total) - (k - 1), 1)
    while hi - lo > 160:
        scan = np.unique(np.round(np.geomspace(lo, hi, 48)).astype(int))
        evaluate(scan)
        i = int(np.searchsorted(scan, best([int(n) for n in scan])))
        lo, hi = int(scan[max(i - 1, 0)]), int(scan[min(i + 1, len(scan) - 1)])
    candidates = np.arange(lo, hi + 1)
    evaluate(candidates)
    return best(candidates.tolist())


#: The last :func:`estimate_weights` result (view, settings, weights): attacks (a') and
#: (b) on the same view share one search.
_LAST_WEIGHTS: list[Any] = []


@dataclass(frozen=True)
class MomentEstimate:
    """Attack (b)'s estimates for every client.

    Attributes
    ----------
    mean, second
        ``(K, d)`` estimated training-split mean and second moment.
    rms
        ``(K, d)`` RMS residual of the fit (units of ``lr``).
    n_train
        ``(K,)`` cell counts used for the number of steps.
    """

    mean: np.ndarray
    second: np.ndarray
    rms: np.ndarray
    n_train: np.ndarray


def estimate_moments(
    view: ObserverView, config: Mapping[str, Any] | None = None, *, tag: str = TAG
) -> MomentEstimate:
    """Recover the rows (attack (a)) and fit every client's moments to them.

    Parameters
    ----------
    view
        The attacker's view (coordinator or client).
    config
        The public scBatchProx config (default: ``view.public["config"]``).
    tag
        Ledger tag of the state aggregation.
    """
    config = dict(config if config is not None else view.public["config"])
    rounds = recover_rows(view, tag=tag)
    if not rounds:
        raise ValueError(f"the {view.observer!r} view holds no aggregates to attack.")
    ops = {o.index: o for o in view.operations}
    k = rounds[0].gamma.shape[0]
    first = ops[rounds[0].op_index]
    if first.weights is not None:
        n_train = np.asarray(first.weights, dtype=np.float64)
    elif first.total_weight is not None:
        n_train = estimate_weights(view, config, tag=tag)
        rounds = recover_rows(view, tag=tag, weights=n_train)
    else:
        raise ValueError("the view holds neither the client weights nor their total.")
    means, seconds, rmss = [], [], []
    for b in range(k):
        steps = n_steps(n_train[b], config)
        starts = [(r.gamma_prev[b], r.beta_prev[b]) for r in rounds]
        targets = [(r.gamma[b], r.beta[b]) for r in rounds]
        m1, m2, rms = fit_moments(starts, targets, steps, config)
        means.append(m1)
        seconds.append(m2)
        rmss.append(rms)
    return MomentEstimate(np.array(means), np.array(seconds), np.array(rmss), n_train)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def scbatchprox_moment_inference(
    view: ObserverView,
    truth: ClientMoments | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    tag: str = TAG,
) -> pd.DataFrame:
    """Attack (b): tidy rows on inferring each client's embedding moments from its rows.

    Parameters
    ----------
    view
        The attacker's view (coordinator or client).
    truth
        The clients' true training-split moments (:func:`client_moments`; evaluation only).
        Without it only the fit's residual is reported.
    config
        The public scBatchProx config (default: ``view.public["config"]``).
    tag
        Ledger tag of the state aggregation.

    Returns
    -------
    Columns as :data:`fedsc.privacy.attacks.COLUMNS`, ``round`` = -1 (all rounds
    together). Metrics per client: ``mean_relative_error``, ``mean_correlation``,
    ``second_relative_error``, ``second_correlation`` (across dimensions; chance: the same
    for the pooled moments of all clients), ``sign_agreement`` of the mean (chance: that of
    the pooled mean) and ``fit_rms`` (residual in units of ``lr``; chance NaN).
    """
    rows: list[dict[str, object]] = []
    if not recover_rows(view, tag=tag):
        return pd.DataFrame(rows, columns=COLUMNS)  # the view holds no aggregates
    est = estimate_moments(view, config, tag=tag)

    def add(client: int, metric: str, value: float, chance: float) -> None:
        rows.append(
            {
                "attack": ATTACK,
                "observer": view.observer,
                "backend": view.backend,
                "target_client": client,
                "round": -1,
                "metric": metric,
                "value": float(value),
                "chance": float(chance),
            }
        )

    pooled = truth.pooled() if truth is not None else None
    for b in range(est.mean.shape[0]):
        add(b, "fit_rms", float(np.sqrt(np.mean(est.rms[b] ** 2))), float("nan"))
        if truth is None or pooled is None:
            continue
        m1, m2 = truth.mean[b], truth.second[b]
        add(b, "mean_relative_error", _rel(est.mean[b], m1), _rel(pooled[0], m1))
        add(b, "mean_correlation", _corr(est.mean[b], m1), _corr(pooled[0], m1))
        add(
            b,
            "sign_agreement",
            float(np.mean(np.sign(est.mean[b]) == np.sign(m1))),
            float(np.mean(np.sign(pooled[0]) == np.sign(m1))),
        )
        add(b, "second_relative_error", _rel(est.second[b], m2), _rel(pooled[1], m2))
        add(b, "second_correlation", _corr(est.second[b], m2), _corr(pooled[1], m2))
    return pd.DataFrame(rows, columns=COLUMNS)


def attack(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """The registered attack: :func:`scbatchprox_moment_inference` against the true moments."""
    return scbatchprox_moment_inference(view, None if truth is None else truth.moments)
