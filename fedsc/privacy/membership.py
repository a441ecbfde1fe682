"""Membership inference against FedscGen: which cells a client trained on (issue 9, 2c).

Members of client ``c`` are its training cells, non-members its held-out validation
cells: FedscGen's own split, rebuilt from the run seed
(:func:`fedsc.privacy.fedscgen_runs.fedscgen_truth`). Both come from the same client,
batch and cell-type mix, so any difference in the attacked model's behaviour on them is
memorisation.

What is attacked (:func:`membership_scores`, on an observer's recorded view):

``coordinator`` (needs clear contributions: plaintext)
    Each client's last local model as the coordinator computes it from its contribution
    (after DP-SGD, or the ``gaussian`` mechanism's clipping and noise, with the division by
    the public weight undone); the reference is the state it broadcast before that round.
    Scorers ``update_<s>``. Auxiliary data: the other clients' cells (a stand-in for a
    public atlas of the same tissue).
``client`` (client ``view.client``; every other client and the coordinator alike)
    The final global model, targeting the other clients; the reference is the initial
    state. Scorers ``global_<s>``. Auxiliary data: the observer's own training cells.

Scorers ``s`` (one score per cell, higher = member):

- ``loss`` (Yeom et al., CSF 2018): minus the per-cell loss (:func:`cell_losses`).
- ``reference``: loss under the reference minus loss under the attacked model (difficulty
  calibration, Watson et al., ICLR 2022): for the coordinator, how much the client's own
  update improved the cell.
- ``lira`` (offline LiRA, Carlini et al., IEEE S&P 2022): :data:`N_SHADOWS` shadow models
  trained like the target from the same reference on auxiliary cells
  (:func:`train_shadow_models`) give each cell's OUT distribution of the log loss
  (Gaussian, pooled variance with few shadows); the score is how far below it the
  attacked model's loss lies (:func:`lira_scores`). Under DP the attacker is adaptive by
  default (``lira_adaptive``): the shadows are trained with the run's DP pipeline
  (:class:`ShadowDP`, :func:`train_shadow_rounds`).

Metrics (:func:`scores_to_metrics`, rows :data:`fedsc.privacy.attacks.COLUMNS`): ROC AUC
(chance 0.5) and optionally the true-positive rate at a low false-positive rate (chance =
that rate; NaN when there are fewer than ``1 / rate`` non-members), per target client and
``..._pooled`` over clients (``target_client`` -1: one ROC, each cell scored under its
client's attacked model). The registered attack ``fedscgen_membership``
(:func:`fedscgen_membership`) reports the AUCs. Score tables of several seeds pool into
one ROC (low FPRs need many non-members); :func:`summarize_over_seeds` gives a mean over
seeds with a t interval.

Cost caps: at most :data:`MAX_CELLS` scored cells per client, :data:`MAX_AUX_CELLS`
auxiliary cells per shadow, :data:`N_SHADOWS` shadows per target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from fedsc.errors import FedscInputError
from fedsc.federation import State
from fedsc.federation.seeding import derive_rng
from fedsc.methods.fedscgen import FedScGenConfig
from fedsc.methods.vae import (
    EPOCH,
    VAE,
    derive_generator,
    make_optimizer,
    torch_threads,
    train_epoch,
)
from fedsc.privacy.attacks import COLUMNS, Truth
from fedsc.privacy.fedscgen_runs import FedscGenTruth, clear_row, fedscgen_of, state_ops
from fedsc.privacy.views import ObserverView
from smpc.flatten import flatten
from smpc.mechanisms import make_mechanism

if TYPE_CHECKING:
    from fedsc.privacy.accounting import DPConfig

__all__ = [
    "MAX_AUX_CELLS",
    "MAX_CELLS",
    "N_SHADOWS",
    "SCORERS",
    "SCORE_COLUMNS",
    "ShadowDP",
    "cell_losses",
    "fedscgen_membership",
    "lira_scores",
    "membership_metrics",
    "membership_scores",
    "scores_to_metrics",
    "shadow_dp",
    "summarize_over_seeds",
    "train_shadow_models",
    "train_shadow_rounds",
]

#: Purpose tag of the shadow models' generators (distinct from FedscGen's tags).
SHADOW = 0x5AD0
#: Shadow models per target of the LiRA attack.
N_SHADOWS = 4
#: Cells scored per client at most (a seeded subset of members and non-members alike).
MAX_CELLS = 1000
#: Auxiliary cells a shadow model trains on at most.
MAX_AUX_CELLS = 2000
#: The scorers of :func:`membership_scores`.
SCORERS = ("loss", "reference", "lira")
#: Columns of :func:`membership_scores` (``scorer``: ``<update|global>_<scorer>``).
SCORE_COLUMNS = ["observer", "backend", "target_client", "scorer", "cell", "score", "member"]
ATTACK = "fedscgen_membership"


# ------------------------------------------------------------------------ shadows
@dataclass(frozen=True)
class ShadowDP:
    """The target run's DP pipeline, for shadows trained the way the target was.

    LiRA's shadows must be trained like the target (Carlini et al., IEEE S&P 2022); against
    a DP target that includes its clipping and noise, i.e. an adaptive attacker (Nasr et
    al., IEEE S&P 2021, instantiate DP adversaries this way). Shadows trained without DP
    compare the target's noised model with un-noised OUT models.

    Attributes
    ----------
    dp_sgd
        Cell-level DP: the run's DP-SGD settings (σ resolved for the federation, clip,
        seeded: the shadows' noise is the attacker's own), or ``None``.
    clip
        Client-level DP (the ``gaussian`` mechanism): the L2 bound C on each round's
        update, or ``None``.
    noise_multiplier, weighting, max_weight, min_honest
        The ``gaussian`` mechanism's settings (ledger description).
    n_clients
        K, the clients of each aggregation.
    """

    dp_sgd: DPConfig | None = None
    clip: float | None = None
    noise_multiplier: float = 0.0
    weighting: str = "uniform"
    max_weight: float | None = None
    min_honest: int | None = None
    n_clients: int = 1

    @classmethod
    def of_run(
        cls,
        config: FedScGenConfig,
        mechanisms: Sequence[Mapping[str, Any]],
        n_trains: Sequence[int],
    ) -> ShadowDP | None:
        """The DP pipeline of a FedscGen run, ``None`` if it ran without DP.

        Parameters
        ----------
        config
            The config the run trained with (``dp``: cell-level DP-SGD settings).
        mechanisms
            The run's mechanism descriptions (ledger; a ``gaussian`` one that applies to
            the state aggregation is client-level DP: its clipping, weighting and noise).
        n_trains
            Every training client's training cells (σ of DP-SGD is resolved over them).
        """
        dp_sgd = None
        if config.dp is not None and config.dp.get("level", "client") == "cell":
            from fedsc.methods.dp_sgd import resolve_for_clients
            from fedsc.privacy.accounting import DPConfig

            conf = DPConfig.from_dict(dict(config.dp))
            assert conf is not None
            conf = resolve_for_clients(
                conf, list(n_trains), config.batch_size, config.local_epochs, config.rounds
            )
            dp_sgd = replace(conf, simulated=True)
        # the gaussian mechanisms that act on the state aggregation (rebuilt from the
        # ledger description, so this follows the mechanism's own rules)
        gauss = [
            m
            for m in mechanisms
            if m.get("name") == "gaussian" and make_mechanism(dict(m)).applies_to("weighted_mean")
        ]
        if dp_sgd is None and not gauss:
            return None
        if not gauss:
            return cls(dp_sgd=dp_sgd, n_clients=len(n_trains))
        g = gauss[0]
        return cls(
            dp_sgd=dp_sgd,
            clip=float(g["clip"]),
            noise_multiplier=float(g["noise_multiplier"]),
            weighting=str(g.get("weighting", "uniform")),
            max_weight=None if g.get("max_weight") is None else float(g["max_weight"]),
            min_honest=None if g.get("min_honest") is None else int(g["min_honest"]),
            n_clients=len(n_trains),
        )

    def _client_std(self, weight: float) -> float:
        k = self.n_clients
        t = k if self.min_honest is None else min(self.min_honest, k)
        std = self.noise_multiplier * float(self.clip or 0.0) / math.sqrt(t)
        if self.weighting == "weighted":
            assert self.max_weight is not None
            std *= self.max_weight / weight
        return std

    def client_noise_std(self, weight: float) -> float:
        """Noise std per value on one client's model as the coordinator computes it.

        ``σ C / √t`` (t = min(min_honest, K)); weighted: times ``max_weight / w_c``
        (:mod:`smpc.mechanisms.gaussian`).
        """
        return self._client_std(weight)

    def mean_noise_std(self, weights: Sequence[float]) -> float:
        """Noise std per value on the released mean of the K clients' models.

        Uniform: ``sqrt(Σ_c s_c²) / K``; weighted: ``sqrt(Σ_c (w_c s_c)²) / W``, with
        ``s_c`` the client's own noise std.
        """
        w = np.asarray(weights, dtype=np.float64)
        s = np.array([self._client_std(float(x)) for x in w])
        if self.weighting == "weighted":
            return float(np.sqrt(np.sum((w * s) ** 2)) / w.sum())
        return float(np.sqrt(np.sum(s**2)) / len(w))


def _shadow_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for ``(seed, *keys)`` (DP-SGD's trainer takes one seed)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, np.uint64)
    return int(state[0] & ((1 << 63) - 1))


def train_shadow_rounds(
    model: VAE,
    aux: torch.Tensor,
    rows: torch.Tensor,
    *,
    rounds: int,
    local_epochs: int,
    key: Sequence[int],
    dp: ShadowDP,
    noise_std: float,
) -> VAE:
    """Train one adaptive shadow in place: ``rounds`` rounds of the target's DP pipeline.

    Each round starts a fresh Adam (as FedscGen's clients do) and trains ``local_epochs``
    epochs on ``aux[rows]``: with DP-SGD (:func:`fedsc.methods.dp_sgd.local_train`, the
    run's σ and clip) under cell-level DP, else FedscGen's trainer with the epoch
    generators ``derive_generator(*key, EPOCH, e)`` (those of the non-adaptive shadows).
    Under client-level DP the round's update is then clipped to L2 norm ``dp.clip`` (the
    whole flat state, as the ``gaussian`` mechanism clips it) and ``N(0, noise_std²)``
    is added to every value (the noise the attacked model carries per round).

    Parameters
    ----------
    model
        A VAE holding the start state (DP variant under DP); trained in place.
    aux, rows
        The auxiliary cells and the rows the shadow trains on.
    rounds, local_epochs
        Federation rounds and local epochs per round the shadow imitates.
    key
        Generator key of this shadow (``(seed, SHADOW, ...)``).
    dp
        The run's DP pipeline.
    noise_std
        Client-level noise std per value and round (:meth:`ShadowDP.client_noise_std` for
        a client's model, :meth:`ShadowDP.mean_noise_std` for the global one).
    """
    seed, *rest = (int(k) for k in key)
    for r in range(rounds):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = make_optimizer(model)
        if dp.dp_sgd is not None:
            from fedsc.methods.dp_sgd import local_train

            local_train(
                model,
                opt,
                aux,
                rows,
                seed=_shadow_seed(seed, *rest),
                client=0,
                round_index=r,
                local_epochs=local_epochs,
                dp=dp.dp_sgd,
            )
        else:
            for j in range(local_epochs):
                g = derive_generator(seed, *rest, EPOCH, r * local_epochs + j)
                train_epoch(model, opt, aux, g, rows)
        if dp.clip is None:
            continue
        flat_start, spec = flatten(start)
        flat_start = np.asarray(flat_start, dtype=np.float64)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        update = np.asarray(flatten(state)[0], dtype=np.float64) - flat_start
        norm = float(np.linalg.norm(update))
        if norm > dp.clip:
            update = update * (dp.clip / norm)
        noise = derive_rng(seed, *rest, EPOCH, r).standard_normal(update.shape)
        new = spec.unflatten(flat_start + update + noise_std * noise)
        model.load_state_dict({k: torch.as_tensor(v, dtype=state[k].dtype) for k, v in new.items()})
    return model


def train_shadow_models(
    fed: FedscGenTruth,
    start: State,
    aux: torch.Tensor,
    *,
    n_cells: int,
    epochs: int,
    key: int,
    n_shadows: int | None = None,
    dp: ShadowDP | None = None,
    rounds: int = 1,
    noise_std: float = 0.0,
) -> list[VAE]:
    """Shadow models: ``epochs`` epochs from ``start`` on random ``n_cells`` of ``aux``.

    Shadow ``k`` draws its cells (without replacement, at most :data:`MAX_AUX_CELLS`), its
    minibatches, dropout and noise from ``derive_generator(fed.seed, SHADOW, key, k, ...)``
    and trains with a fresh Adam, as FedscGen's clients do; the attacker knows the public
    hyper-parameters (``fed.config``) and the starting state. With ``dp`` (the adaptive
    attacker) it imitates the target's DP pipeline instead: ``rounds`` rounds of
    ``epochs / rounds`` epochs (:func:`train_shadow_rounds`, client-level noise
    ``noise_std`` per round). ``n_shadows`` defaults to :data:`N_SHADOWS`.
    """
    if dp is not None and (rounds < 1 or epochs % rounds):
        raise FedscInputError(
            f"adaptive shadows train {epochs} epochs in {rounds} rounds: give epochs as "
            "rounds x local_epochs."
        )
    n_cells = min(int(n_cells), int(aux.shape[0]), MAX_AUX_CELLS)
    models = []
    for k in range(N_SHADOWS if n_shadows is None else n_shadows):
        g = derive_generator(fed.seed, SHADOW, key, k)
        rows = torch.randperm(aux.shape[0], generator=g)[:n_cells].sort().values
        model = fed.model_from_state(start)
        if dp is not None:
            train_shadow_rounds(
                model,
                aux,
                rows,
                rounds=rounds,
                local_epochs=epochs // rounds,
                key=(fed.seed, SHADOW, key, k),
                dp=dp,
                noise_std=noise_std,
            )
        else:
            opt = make_optimizer(model)
            for e in range(epochs):
                g = derive_generator(fed.seed, SHADOW, key, k, EPOCH, e)
                train_epoch(model, opt, aux, g, rows)
        models.append(model.eval())
    return models


def shadow_dp(view: ObserverView, fed: FedscGenTruth) -> ShadowDP | None:
    """The run's DP pipeline as the attacker reads it (config and ledger), ``None``: no DP."""
    n_trains = [len(fed.splits[c][0]) for c in fed.training]
    return ShadowDP.of_run(fed.config, view.mechanisms, n_trains)


# ------------------------------------------------------------------------ scores
@torch.no_grad()
def cell_losses(model: VAE, x: torch.Tensor, *, kl: bool = False) -> np.ndarray:
    """Per-cell loss in evaluation mode (z = μ): mean squared error over genes.

    With ``kl=True`` adds ``kl_weight`` x the cell's KL divergence (the VAE loss per cell).
    """
    model.eval()
    recon, mu, logvar = model(x)
    loss = ((recon - x) ** 2).mean(dim=1).to(torch.float64)
    if kl:
        kld = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        loss = loss + model.config.kl_weight * kld.to(torch.float64)
    return loss.numpy()


def lira_scores(
    model: VAE,
    shadows: Sequence[VAE],
    x: torch.Tensor,
    *,
    kl: bool = False,
    global_variance: bool | None = None,
) -> np.ndarray:
    """Offline LiRA: per-cell Gaussian OUT distribution of the log loss from shadows.

    Every shadow is an OUT model for the target cells (trained without the target
    client). For cell i with log losses ``l_k(i)`` under the shadows, ``μ_i`` is their
    mean and ``σ`` their standard deviation (pooled over cells when ``global_variance``,
    the default with fewer than 16 shadows, as Carlini et al. advise for few shadows); the
    score is ``(μ_i - log loss(i)) / σ``, monotone in the one-sided likelihood ratio.
    """
    if len(shadows) < 2:
        raise FedscInputError("offline LiRA needs at least 2 shadow models.")
    target = np.log(cell_losses(model, x, kl=kl))
    out = np.log(np.stack([cell_losses(s, x, kl=kl) for s in shadows]))
    mu = out.mean(axis=0)
    if global_variance is None:
        global_variance = len(shadows) < 16
    if global_variance:
        sigma = np.full_like(mu, np.sqrt(np.mean(out.var(axis=0, ddof=1))))
    else:
        sigma = out.std(axis=0, ddof=1)
    return (mu - target) / np.maximum(sigma, 1e-12)


def _capped(fed: FedscGenTruth, c: int) -> tuple[torch.Tensor, np.ndarray]:
    """Client ``c``'s scored cells (at most :data:`MAX_CELLS`) and their membership."""
    x = fed.data[c]
    member = np.zeros(x.shape[0], dtype=bool)
    member[fed.splits[c][0]] = True
    if x.shape[0] > MAX_CELLS:
        g = np.random.default_rng([fed.seed, SHADOW, c])
        keep = np.sort(g.choice(x.shape[0], MAX_CELLS, replace=False))
        return x[torch.from_numpy(keep)], member[keep]
    return x, member


def membership_scores(
    view: ObserverView,
    truth: Truth | None,
    *,
    scorers: Sequence[str] = SCORERS,
    n_shadows: int | None = None,
    adaptive: bool | None = None,
    kl: bool = False,
    targets: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Per-cell membership scores of every client ``view`` can attack (module docstring).

    Parameters
    ----------
    view
        A ``coordinator`` view holding clear contributions, or a ``client`` view; others
        give no rows.
    truth
        A :class:`~fedsc.privacy.attacks.Truth` with ``fedscgen`` (or none: no rows).
    scorers
        Of :data:`SCORERS` (shadows are trained only for ``lira``).
    n_shadows
        Shadows per target (default :data:`N_SHADOWS`).
    adaptive
        Default: when the run used DP (:func:`shadow_dp`), the shadows are trained with
        its DP pipeline and the scorer is ``lira_adaptive``; ``False``: without DP.
    kl
        Add the KL term to the per-cell loss (the VAE loss) rather than the reconstruction
        error alone.
    targets
        Client indices to attack (default: all the view can attack).

    Returns
    -------
    :data:`SCORE_COLUMNS`: per target and cell, ``scorer`` (``update_loss``,
    ``global_lira``, ...), ``score`` and ``member``.
    """
    fed = fedscgen_of(truth)
    ops = state_ops(view)
    if fed is None or not ops or view.observer not in ("coordinator", "client"):
        return pd.DataFrame(columns=SCORE_COLUMNS)
    unknown = sorted(set(scorers) - set(SCORERS))
    if unknown:
        raise FedscInputError(f"unknown scorer(s) {unknown}; choose from {list(SCORERS)}.")
    last = max(ops, key=lambda o: o.index)
    spec = fed.spec()
    cfg = fed.config
    dp = shadow_dp(view, fed) if adaptive is not False else None
    lira = "lira" if dp is None else "lira_adaptive"
    n_trains = [float(len(fed.splits[c][0])) for c in fed.training]
    chosen = set(fed.training if targets is None else targets)
    attacked: list[tuple[int, VAE, VAE, Callable[[], list[VAE]]]] = []
    with torch_threads(cfg.num_threads):
        if view.observer == "coordinator":
            prefix = "update"
            ref = spec.unflatten(np.asarray(last.reference))
            ref_model = fed.model_from_state(ref)
            for pos, c in enumerate(fed.training):
                own = clear_row(last, pos)
                if own is None or c not in chosen:
                    continue
                aux = torch.cat([fed.data[o] for o in fed.training if o != c])
                noise = 0.0 if dp is None else dp.client_noise_std(n_trains[pos])
                shadows: Callable[[], list[VAE]] = partial(
                    train_shadow_models,
                    fed,
                    ref,
                    aux,
                    n_cells=len(fed.splits[c][0]),
                    epochs=cfg.local_epochs,
                    key=1000 + c,
                    n_shadows=n_shadows,
                    dp=dp,
                    noise_std=noise,
                )
                attacked.append((c, fed.model(own, spec), ref_model, shadows))
        else:
            prefix = "global"
            me = None if view.client is None else dict(enumerate(fed.training)).get(view.client)
            if last.aggregate is None or me is None:
                return pd.DataFrame(columns=SCORE_COLUMNS)
            init = spec.unflatten(np.asarray(min(ops, key=lambda o: o.index).reference))
            model = fed.model(last.aggregate, spec)
            aux = fed.data[me][torch.from_numpy(fed.splits[me][0])]
            noise = 0.0 if dp is None else dp.mean_noise_std(n_trains)
            shared = cache(
                partial(
                    train_shadow_models,
                    fed,
                    init,
                    aux,
                    n_cells=aux.shape[0],
                    epochs=len(ops) * cfg.local_epochs,
                    key=me,
                    n_shadows=n_shadows,
                    dp=dp,
                    rounds=len(ops),
                    noise_std=noise,
                )
            )
            init_model = fed.model_from_state(init)
            attacked = [
                (c, model, init_model, shared) for c in fed.training if c != me and c in chosen
            ]
        frames = []
        for c, model, ref_model, shadows in attacked:
            x, member = _capped(fed, c)
            loss = cell_losses(model, x, kl=kl)
            for name in scorers:
                if name == "loss":
                    score = -loss
                elif name == "reference":
                    score = cell_losses(ref_model, x, kl=kl) - loss
                else:
                    score, name = lira_scores(model, shadows(), x, kl=kl), lira
                frames.append(
                    pd.DataFrame(
                        {
                            "observer": view.observer,
                            "backend": view.backend,
                            "target_client": c,
                            "scorer": f"{prefix}_{name}",
                            "cell": np.arange(x.shape[0]),
                            "score": score,
                            "member": member,
                        },
                        columns=SCORE_COLUMNS,
                    )
                )
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def membership_metrics(
    scores: np.ndarray, is_member: np.ndarray, *, fprs: Sequence[float] = (0.01, 0.001)
) -> dict[str, tuple[float, float]]:
    """Metric -> (value, chance) of ``scores`` (higher = member).

    ``auc`` (chance 0.5; NaN without members or non-members) and ``tpr@<f>fpr`` for each
    rate ``f`` in ``fprs`` (chance ``f``): the TPR at FPR <= f, NaN with fewer than
    ``1 / f`` non-members (10 validation cells per 100-cell pancreas client resolve no
    FPR below 10 %; pooling clients and seeds resolves lower rates).
    """
    y = np.asarray(is_member, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_out = int((~y).sum())
    degenerate = y.all() or not y.any()
    out = {"auc": (math.nan if degenerate else float(roc_auc_score(y, s)), 0.5)}
    if fprs and not degenerate:
        fpr, tpr, _ = roc_curve(y, s)
    for f in fprs:
        resolved = not degenerate and n_out * f >= 1.0 - 1e-9
        value = float(np.max(tpr[fpr <= f + 1e-12])) if resolved else math.nan
        out[f"tpr@{f:g}fpr"] = (value, float(f))
    return out


def scores_to_metrics(
    scores: pd.DataFrame,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
    per_client: bool = True,
    pooled: bool = True,
) -> pd.DataFrame:
    """Attack rows (:data:`~fedsc.privacy.attacks.COLUMNS`) from per-cell scores.

    Per (observer, backend): per target client and scorer, ``<scorer>_<metric>``
    (:func:`membership_metrics`); pooled over the targets (``target_client`` -1),
    ``<scorer>_<metric>_pooled``: every client's cells, each scored under its own
    client's attacked model, in one ROC. Concatenated score tables of several seeds pool
    likewise (``per_client=False``).
    """
    rows: list[dict[str, Any]] = []

    def add(o: Any, b: Any, c: Any, metric: str, g: pd.DataFrame) -> None:
        score, member = g["score"].to_numpy(), g["member"].to_numpy()
        for name, (value, chance) in membership_metrics(score, member, fprs=fprs).items():
            rows.append(
                {
                    "attack": ATTACK,
                    "observer": o,
                    "backend": b,
                    "target_client": int(c),
                    "round": None,
                    "metric": metric.format(name),
                    "value": value,
                    "chance": chance,
                }
            )

    for (o, b), g in scores.groupby(["observer", "backend"], sort=False):
        if per_client:
            for c, gc in g.groupby("target_client", sort=False):
                for scorer, gs in gc.groupby("scorer", sort=False):
                    add(o, b, c, f"{scorer}_{{}}", gs)
        if pooled:
            for scorer, gs in g.groupby("scorer", sort=False):
                add(o, b, -1, f"{scorer}_{{}}_pooled", gs)
    return pd.DataFrame(rows, columns=COLUMNS)


def fedscgen_membership(
    view: ObserverView, truth: Truth | None, *, adaptive: bool | None = None
) -> pd.DataFrame:
    """The registered attack: per-client and pooled AUCs of every scorer (module docstring).

    ``adaptive`` as in :func:`membership_scores` (metric ``<prefix>_lira_adaptive_auc``
    under DP by default).
    """
    return scores_to_metrics(membership_scores(view, truth, adaptive=adaptive), fprs=())


def summarize_over_seeds(
    rows: pd.DataFrame,
    *,
    by: Sequence[str] = ("attack", "observer", "target_client", "metric"),
    level: float = 0.95,
) -> pd.DataFrame:
    """Mean over seeds with a Student-t interval, per group of ``by``.

    Rows of one seed within a group (e.g. several clients when ``by`` leaves out
    ``target_client``) are averaged first, so the interval is over seeds only.

    Columns: ``by``, ``mean``, ``low``, ``high`` (NaN with one seed), ``n_seeds`` and
    ``chance``. NaN values (unresolvable FPRs) are left out of the mean.
    """
    out = []
    for keys, g in rows.groupby(list(by), sort=False, dropna=False):
        # several rows of one seed in a group (e.g. clients): average them first
        values = g.groupby("seed")["value"].mean() if "seed" in g else g["value"]
        v = values.astype(float).dropna().to_numpy()
        rec = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        k = len(v)
        mean = float(v.mean()) if k else float("nan")
        if k >= 2:
            half = float(stats.t.ppf(0.5 + level / 2, k - 1) * v.std(ddof=1) / np.sqrt(k))
        else:
            half = float("nan")
        rec.update(
            mean=mean,
            low=mean - half,
            high=mean + half,
            n_seeds=k,
            chance=float(g["chance"].astype(float).mean()),
        )
        out.append(rec)
    return pd.DataFrame(out)
