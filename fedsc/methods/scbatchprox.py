"""scBatchProx: post-hoc refinement of a precomputed embedding with per-batch FiLM adapters.

Each batch is a client. The adapter is a pair of batch-indexed tables gamma, beta
(B x d), initialised to the identity (gamma = 1, beta = 0); a cell of batch b maps to
``gamma_b * z + beta_b``. Client b trains only row b with Adam on

    mean_i ||gamma_b * z_i + beta_b - z_i||^2
    + mu (||gamma_b - gamma_b^t||^2 + ||beta_b - beta_b^t||^2)
    + lam (||gamma||^2 + ||beta||^2),

and the server takes the cell-count weighted FedAvg of the whole tables
(docs/algorithms.md#scbatchprox).

Two variants, the same mathematics, different visibility (``ScBatchProxConfig.secure_rows``):

- paper-faithful (default): every client sends its whole tables, row ``b`` changed, and
  the coordinator receives their weighted mean. Because only client ``b`` changes row
  ``b``, the averaged row is ``(n_b theta_b' + (N - n_b) theta_b^t) / N`` and the
  coordinator, who knows ``theta^t``, ``N`` and ``n_b``, recovers every client's row
  exactly, also under CrypTen.
- secure rows: the regulariser ``lam (||gamma||^2 + ||beta||^2)`` is a sum over rows, so
  the gradient for row ``b`` involves row ``b`` only and client ``b`` needs nothing but
  its own row. Each client keeps its row; it sends its update
  ``theta_b' - theta_b^t`` in row ``b`` and zeros elsewhere, and
  :meth:`smpc.Aggregator.weighted_mean_to_owners` reveals row ``b`` of the weighted mean,
  ``n_b (theta_b' - theta_b^t) / N``, and ``N`` to client ``b`` only. Client ``b``
  adds it to its row: ``theta_b^t + n_b (theta_b' - theta_b^t) / N``, which is the
  paper's averaged row (equal up to float64 rounding: the sum is grouped differently).
  The coordinator learns ``N = sum_b n_b`` and nothing else, not even the mean loss.

Why hand-written instead of autograd: the loss is quadratic in (gamma_b, beta_b), so a
minibatch enters the gradient only through its sums ``S1 = sum z`` and ``S2 = sum z^2``.
We precompute those sums for every minibatch of every client and run Adam on all
clients' rows at once in float64 numpy, which is exact up to rounding and ~50x faster
than the per-client autograd loop in :mod:`fedsc.methods.scbatchprox_reference` (the
slow reference the tests compare against).

The coordinator's side of a run (weights, identity tables, the owner-revealed strategy,
the rounds, the final step) is :func:`fedsc.methods.scbatchprox_driver.drive`, which the
deployment (:mod:`fedsc.deploy.scbatchprox`) runs too; here :class:`InProcessSites` are
its clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedsc.errors import FedscInputError
from fedsc.federation import FederationResult, LocalResult, State, Strategy
from fedsc.methods.configs import ScBatchProxConfig
from fedsc.methods.health import check_loss
from fedsc.methods.scbatchprox_driver import check_strategy, drive, training_split
from smpc import Aggregator

#: What each variant reveals (run info, ``adata.uns``).
REVEALS_PAPER = (
    "paper-faithful: the coordinator receives the averaged adapter tables and can recover "
    "each client's row from them (row b = (n_b theta_b' + (N - n_b) theta_b^t) / N)"
)
REVEALS_SECURE_ROWS = (
    "secure rows: only the total weight N = sum of the clients' training cells is "
    "revealed to the coordinator; row b of the averaged update is revealed only to client b"
)
REVEALS_SECURE_ROWS_NOT_PRIVATE = (
    "secure rows protocol on a non-private aggregator: the coordinator receives every "
    "client's row update in the clear (use a private backend, e.g. crypten, for the "
    "secure-rows guarantee)"
)


@dataclass
class FiLMAdapter:
    """Batch-indexed FiLM tables: a cell of batch ``batches[i]`` maps to gamma[i] * z + beta[i]."""

    batches: list[str]
    gamma: np.ndarray
    beta: np.ndarray

    @classmethod
    def identity(cls, batches: Sequence[str], dim: int) -> FiLMAdapter:
        """gamma = 1, beta = 0: the adapter leaves every cell unchanged."""
        b = len(batches)
        return cls(list(batches), np.ones((b, dim)), np.zeros((b, dim)))

    @property
    def dim(self) -> int:
        """Embedding dimension d of the tables."""
        return int(self.gamma.shape[1])

    def rows(self, batch_labels: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row index of each cell's batch; a clear error for batches without a row."""
        lookup = {b: i for i, b in enumerate(self.batches)}
        labels = np.asarray(batch_labels).astype(str)
        unknown = sorted(set(labels) - set(lookup))
        if unknown:
            raise FedscInputError(
                f"batches {unknown} have no adapter row (known: {self.batches}); train them "
                "with ScBatchProx.extend(...) (continual) or refit on all batches."
            )
        return np.fromiter((lookup[b] for b in labels), dtype=np.int64, count=len(labels))

    def transform(self, z: np.ndarray, batch_labels: Sequence[str] | np.ndarray) -> np.ndarray:
        """Apply each cell's batch row: gamma_b * z + beta_b (float64)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise FedscInputError(
                f"embedding has shape {z.shape} but the adapter was fitted on {self.dim} dims."
            )
        r = self.rows(batch_labels)
        return self.gamma[r] * z + self.beta[r]


def epoch_batches(
    n_train: int, batch_size: int, epochs: int, generator: torch.Generator
) -> list[np.ndarray]:
    """Minibatches (positions into the training split) for ``epochs`` shuffled epochs.

    The last batch of an epoch may be smaller; nothing is dropped.
    """
    out: list[np.ndarray] = []
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=generator).numpy()
        out.extend(perm[i : i + batch_size] for i in range(0, n_train, batch_size))
    return out


class ScBatchProxFederation:
    """The federated method scBatchProx gives the engine.

    Parameters
    ----------
    z
        Fixed embedding of all cells taking part (N x d).
    client_rows
        For each client, the adapter row it trains.
    client_cells
        For each client, positions of its cells in ``z``.
    init
        Tables to start from (rows of all clients; continual training passes rows of
        new batches only).
    config, seed
        Hyper-parameters and the run seed (fixes the training splits).
    indices
        The clients' indices in the federation, when ``client_cells`` lists only some of
        them (a deployed site: its own); default ``0..len(client_cells)-1``.

    With ``config.secure_rows`` the clients keep their rows (:attr:`own_rows`, client-side
    state), the engine's global state is empty and updates are sent as deltas in the
    client's row, zeros elsewhere (see :class:`~fedsc.federation.OwnerRevealFedAvg`).
    """

    def __init__(
        self,
        z: np.ndarray,
        client_rows: Sequence[int],
        client_cells: Sequence[np.ndarray],
        init: tuple[np.ndarray, np.ndarray],
        config: ScBatchProxConfig,
        seed: int,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.config = config
        self.client_rows = list(client_rows)
        self.init_gamma, self.init_beta = init
        self.secure_rows = bool(config.secure_rows)
        #: secure_rows: each client's own (gamma row, beta row), held client-side.
        self.own_rows: list[tuple[np.ndarray, np.ndarray]] = [
            (self.init_gamma[r].copy(), self.init_beta[r].copy()) for r in self.client_rows
        ]
        self.train_z = []
        # each client's split is seeded by its index in the federation: a deployed site
        # holding only its own cells passes that index (``indices``)
        indices = list(range(len(client_cells))) if indices is None else list(indices)
        for c, cells in zip(indices, client_cells, strict=True):
            split = training_split(len(cells), config.train_fraction, seed, c)
            self.train_z.append(np.asarray(z[cells[split]], dtype=np.float64))
        #: Client names for messages (set by :meth:`ScBatchProx._train`).
        self.client_names: list[str] | None = None
        #: Per client: mean squared norm of its cells. A local loss above it means the
        #: adapter moves cells farther than their own length: training has diverged.
        self.scale = [float(np.mean(np.sum(zc * zc, axis=1))) for zc in self.train_z]

    def initial_state(self) -> State:
        """The global tables before round 0 (:class:`FederatedMethod`)."""
        if self.secure_rows:
            return {}  # the coordinator holds no rows
        return {
            "gamma": torch.from_numpy(self.init_gamma.copy()),
            "beta": torch.from_numpy(self.init_beta.copy()),
        }

    def receive(self, client: int, owned: dict[str | None, np.ndarray]) -> None:
        """secure_rows: client ``client`` adds its row of the averaged update to its row."""
        gamma, beta = self.own_rows[client]
        self.own_rows[client] = (gamma + owned["gamma"][0], beta + owned["beta"][0])

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """One client's local epochs from the broadcast tables (:class:`FederatedMethod`)."""
        return self.local_updates([client], global_state, round_index, [generator])[0]

    def _minibatch_sums(
        self, clients: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per client and step: S1 = sum z, S2 = sum z^2 over the minibatch, and its size."""
        cfg = self.config
        per_client = []
        for c, g in zip(clients, generators, strict=True):
            zc = self.train_z[c]
            batches = epoch_batches(len(zc), cfg.batch_size, cfg.local_epochs, g)
            order = np.concatenate(batches)
            starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
            zs = zc[order]
            s1 = np.add.reduceat(zs, starts, axis=0)
            s2 = np.add.reduceat(zs * zs, starts, axis=0)
            per_client.append((s1, s2, np.array([len(b) for b in batches], dtype=np.float64)))
        steps = max(len(m) for _, _, m in per_client)
        d = self.train_z[0].shape[1]
        s1 = np.zeros((len(clients), steps, d))
        s2 = np.zeros((len(clients), steps, d))
        m = np.zeros((len(clients), steps))
        for k, (a, b, n) in enumerate(per_client):
            s1[k, : len(n)], s2[k, : len(n)], m[k, : len(n)] = a, b, n
        return s1, s2, m

    def local_updates(
        self,
        clients: Sequence[int],
        global_state: State,
        round_index: int,
        generators: Sequence[torch.Generator],
    ) -> list[LocalResult]:
        """All clients' local training of one round, vectorised over clients."""
        cfg = self.config
        rows = [self.client_rows[c] for c in clients]
        s1, s2, m = self._minibatch_sums(clients, generators)
        if self.secure_rows:  # each client starts from its own row, held client-side
            g0 = np.stack([self.own_rows[c][0] for c in clients])
            b0 = np.stack([self.own_rows[c][1] for c in clients])
            # the update tables have the rows of ``init`` (a deployed site: every row)
            gamma_t = np.zeros((len(self.init_gamma), g0.shape[1]))
            beta_t = np.zeros_like(gamma_t)
        else:
            gamma_t = global_state["gamma"].numpy()
            beta_t = global_state["beta"].numpy()
            g0, b0 = gamma_t[rows].copy(), beta_t[rows].copy()  # rows at the global value
        gam, bet = g0.copy(), b0.copy()
        # Adam state per client row (fresh every round: each local training is new).
        mg, vg = np.zeros_like(gam), np.zeros_like(gam)
        mb, vb = np.zeros_like(bet), np.zeros_like(bet)
        beta1, beta2 = cfg.adam_betas
        loss_sum = np.zeros(len(clients))
        for t in range(m.shape[1]):
            n = m[:, t]
            active = n > 0
            if not active.any():
                break
            inv = np.where(active, 2.0 / np.maximum(n, 1.0), 0.0)[:, None]
            gm1 = gam - 1.0
            grad_g = inv * (gm1 * s2[:, t] + bet * s1[:, t])
            grad_b = inv * (gm1 * s1[:, t]) + np.where(active, 2.0, 0.0)[:, None] * bet
            grad_g += 2.0 * cfg.mu * (gam - g0) + 2.0 * cfg.lam * gam
            grad_b += 2.0 * cfg.mu * (bet - b0) + 2.0 * cfg.lam * bet
            loss_sum += np.where(
                active,
                (gm1 * gm1 * s2[:, t] + 2 * gm1 * bet * s1[:, t]).sum(1) / np.maximum(n, 1)
                + (bet * bet).sum(1),
                0.0,
            )
            step = t + 1  # active steps form a prefix, so this is each active row's count
            mg = np.where(active[:, None], beta1 * mg + (1 - beta1) * grad_g, mg)
            vg = np.where(active[:, None], beta2 * vg + (1 - beta2) * grad_g * grad_g, vg)
            mb = np.where(active[:, None], beta1 * mb + (1 - beta1) * grad_b, mb)
            vb = np.where(active[:, None], beta2 * vb + (1 - beta2) * grad_b * grad_b, vb)
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            upd_g = cfg.lr / bc1 * mg / (np.sqrt(vg) / np.sqrt(bc2) + cfg.adam_eps)
            upd_b = cfg.lr / bc1 * mb / (np.sqrt(vb) / np.sqrt(bc2) + cfg.adam_eps)
            gam = np.where(active[:, None], gam - upd_g, gam)
            bet = np.where(active[:, None], bet - upd_b, bet)
        results = []
        n_steps = (m > 0).sum(1)
        for k, c in enumerate(clients):
            loss = float(loss_sum[k] / max(n_steps[k], 1))
            finite = bool(np.isfinite(gam[k]).all() and np.isfinite(bet[k]).all())
            if not finite or loss > max(self.scale[c], 1e-12):
                name = self.client_names[c] if self.client_names else str(c)
                check_loss(
                    float("nan") if not finite else float("inf"),
                    method="scBatchProx",
                    lr=cfg.lr,
                    default_lr=ScBatchProxConfig.lr,
                    where=f"round {round_index + 1}/{cfg.rounds}",
                    client=name,
                    detail=(
                        None
                        if not finite
                        else f"the local loss {loss:.3g} exceeds the cells' own mean squared "
                        f"norm {self.scale[c]:.3g} (the adapter moves cells farther than "
                        "their length)"
                    ),
                )
            g_new, b_new = gamma_t.copy(), beta_t.copy()
            if self.secure_rows:  # the update in the client's row, zeros elsewhere
                g_new[rows[k]], b_new[rows[k]] = gam[k] - g0[k], bet[k] - b0[k]
            else:
                g_new[rows[k]], b_new[rows[k]] = gam[k], bet[k]
            results.append(
                LocalResult(
                    {"gamma": torch.from_numpy(g_new), "beta": torch.from_numpy(b_new)},
                    weight=float(len(self.train_z[c])),
                    metrics={"recon_loss": loss},
                )
            )
        return results


@dataclass
class ScBatchProx:
    """A fitted scBatchProx model: the adapter plus what produced it."""

    adapter: FiLMAdapter
    config: ScBatchProxConfig
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    ledger: dict[str, Any] = field(default_factory=dict)
    #: How each round's results are aggregated (``None``: FedAvg, the paper's).
    strategy: Strategy | str | None = None
    #: Whether every aggregator it was trained with was private.
    _private: bool = field(default=True, repr=False)

    @property
    def reveals(self) -> str:
        """What the training revealed to the coordinator (for run info and ``uns``).

        One of :data:`REVEALS_PAPER`, :data:`REVEALS_SECURE_ROWS` (private aggregator)
        or :data:`REVEALS_SECURE_ROWS_NOT_PRIVATE`.
        """
        if not self.config.secure_rows:
            return REVEALS_PAPER
        return REVEALS_SECURE_ROWS if self._private else REVEALS_SECURE_ROWS_NOT_PRIVATE

    def transform(self, z: np.ndarray, batch_labels: Sequence[str] | np.ndarray) -> np.ndarray:
        """Refined embedding of cells ``z`` from batches ``batch_labels``.

        With ``secure_rows`` this is computed batch by batch from each batch's own row,
        as each client computes its cells' embedding locally (the same values as
        ``adapter.transform``).
        """
        if not self.config.secure_rows:
            return self.adapter.transform(z, batch_labels)
        rows = self.adapter.rows(batch_labels)  # validates labels and dims below
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.adapter.dim:
            return self.adapter.transform(z, batch_labels)  # raises the usual error
        out = np.empty_like(z)
        for r in np.unique(rows):
            cells = rows == r
            out[cells] = self.client_transform(z[cells], self.adapter.batches[r])
        return out

    def client_transform(self, z: np.ndarray, batch: str) -> np.ndarray:
        """Client-side refinement of one batch's cells with that batch's row only."""
        r = self.adapter.rows([batch])[0]
        return self.adapter.gamma[r] * np.asarray(z, dtype=np.float64) + self.adapter.beta[r]

    @classmethod
    def fit(
        cls,
        z: np.ndarray,
        batch_labels: Sequence[str] | np.ndarray,
        aggregator: Aggregator,
        *,
        config: ScBatchProxConfig | None = None,
        seed: int = 0,
        batches: Sequence[str] | None = None,
        show_progress: bool | None = None,
        strategy: Strategy | str | None = None,
    ) -> ScBatchProx:
        """Train adapters for every batch from the identity (one client per batch).

        ``strategy`` aggregates each round (``None``: FedAvg); :meth:`extend` reuses it.
        With ``config.secure_rows`` the strategy is fixed
        (:class:`~fedsc.federation.OwnerRevealFedAvg`) and ``strategy`` must be ``None``.
        """
        config = config or ScBatchProxConfig()
        check_strategy(config, strategy)  # before any work, as the driver refuses it
        z, labels = _check_inputs(z, batch_labels)
        batches = list(batches) if batches is not None else sorted(set(labels))
        adapter = FiLMAdapter.identity(batches, z.shape[1])
        model = cls(adapter, config, seed, strategy=strategy)
        model._train(z, labels, batches, aggregator, show_progress)
        return model

    def extend(
        self,
        z_new: np.ndarray,
        batch_labels_new: Sequence[str],
        aggregator: Aggregator,
        *,
        show_progress: bool | None = None,
    ) -> ScBatchProx:
        """Continual training: add identity rows for new batches and train only those.

        Existing rows are frozen and never sent or averaged, so cells of earlier batches
        keep bit-identical coordinates. Only the new batches' clients take part.
        """
        z_new, labels = _check_inputs(z_new, batch_labels_new, min_batches=1)
        if z_new.shape[1] != self.adapter.dim:
            raise FedscInputError(
                f"new cells have {z_new.shape[1]} dims, the adapter {self.adapter.dim}; project "
                "them with the upstream model fitted on the first stage."
            )
        new = sorted(set(labels))
        known = sorted(set(new) & set(self.adapter.batches))
        if known:
            raise FedscInputError(
                f"batches {known} already have adapter rows; continual training adds new "
                "batches only (use ScBatchProx.fit to retrain everything)."
            )
        old = self.adapter
        self.adapter = FiLMAdapter(
            old.batches + new,
            np.vstack([old.gamma, np.ones((len(new), old.dim))]),
            np.vstack([old.beta, np.zeros((len(new), old.dim))]),
        )
        self._train(z_new, labels, new, aggregator, show_progress)
        return self

    def _train(
        self,
        z: np.ndarray,
        labels: np.ndarray,
        train_batches: Sequence[str],
        aggregator: Aggregator,
        show_progress: bool | None,
    ) -> FederationResult:
        sites = InProcessSites(z, labels, train_batches, self.adapter, self.config, self.seed)
        done = drive(
            sites,
            aggregator,
            self.config,
            self.seed,
            strategy=self.strategy,
            show_progress=show_progress,
        )
        result = done.federation
        self.history.extend(result.history)
        self.seconds += result.seconds
        self.ledger = aggregator.ledger.to_dict()
        self._private = self._private and bool(aggregator.private)
        return result


class InProcessSites:
    """The simulation's clients of the one driver (a :class:`ScBatchProxSites`).

    Every client's cells are in this process; one :class:`ScBatchProxFederation` trains
    all their rows at once (vectorised). The final step writes the trained rows into
    ``adapter`` (with ``secure_rows``, the union of the rows the clients hold: a
    simulation convenience, no party of the protocol holds it; each client applies its
    own row, :meth:`ScBatchProx.client_transform`).

    Parameters
    ----------
    z, labels
        The cells' embedding and batch labels.
    batches
        The batches that train (one client each, in client-index order).
    adapter
        The adapter whose rows of ``batches`` the run trains.
    config, seed
        The method config and the run seed.
    """

    def __init__(
        self,
        z: np.ndarray,
        labels: np.ndarray,
        batches: Sequence[str],
        adapter: FiLMAdapter,
        config: ScBatchProxConfig,
        seed: int,
    ) -> None:
        self.names = [str(b) for b in batches]
        self.cells = [np.flatnonzero(labels == b) for b in batches]
        self.n_obs = {n: len(c) for n, c in zip(self.names, self.cells, strict=True)}
        self.dims = int(z.shape[1])
        self.z, self.adapter, self.config, self.seed = z, adapter, config, seed
        self.method: ScBatchProxFederation | None = None

    def start_training(
        self, initial: tuple[np.ndarray, np.ndarray], n_train: Mapping[str, int]
    ) -> ScBatchProxFederation:
        """One federation over every client (its weights are the same training cells)."""
        self.method = ScBatchProxFederation(
            self.z,
            client_rows=range(len(self.names)),
            client_cells=self.cells,
            init=initial,
            config=self.config,
            seed=self.seed,
        )
        self.method.client_names = list(self.names)
        return self.method

    def receive(self, client: int, owned: dict[str | None, np.ndarray]) -> None:
        """``secure_rows``: client ``client`` adds its row of the mean to its own row."""
        assert self.method is not None
        self.method.receive(client, owned)

    def apply(self, tables: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Write the trained rows into the adapter; nothing is written elsewhere."""
        assert self.method is not None
        rows = self.adapter.rows(self.names)
        if self.config.secure_rows:
            self.adapter.gamma[rows] = np.stack([g for g, _ in self.method.own_rows])
            self.adapter.beta[rows] = np.stack([b for _, b in self.method.own_rows])
        else:
            self.adapter.gamma[rows] = tables["gamma"]
            self.adapter.beta[rows] = tables["beta"]
        return {}


def _check_inputs(
    z: np.ndarray, batch_labels: Sequence[str] | np.ndarray, min_batches: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z)
    labels = np.asarray(batch_labels).astype(str)
    if z.ndim != 2:
        raise FedscInputError(f"embedding must be 2-D (cells x dims), got shape {z.shape}.")
    if len(labels) != z.shape[0]:
        raise FedscInputError(
            f"{len(labels)} batch labels for {z.shape[0]} cells; pass one label per cell."
        )
    if not np.all(np.isfinite(z)):
        raise FedscInputError(
            "embedding contains NaN or Inf; recompute the upstream embedding or drop those cells."
        )
    values, counts = np.unique(labels, return_counts=True)
    if len(values) < min_batches:
        raise FedscInputError(
            f"found {len(values)} batch(es) {values.tolist()}; scBatchProx needs at least "
            f"{min_batches} (each batch is a client)."
        )
    small = values[counts < 2].tolist()
    if small:
        raise FedscInputError(
            f"batch(es) {small} have fewer than 2 cells; drop or merge them before training."
        )
    return z.astype(np.float64, copy=False), labels
