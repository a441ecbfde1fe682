"""FedscGen runs to attack: the truth of a run and a recorded offline run.

The attacks on FedscGen (:mod:`fedsc.privacy.membership`,
:mod:`fedsc.privacy.property_inference`, :mod:`fedsc.privacy.revealed_values`) read an
observer's recorded view (:mod:`fedsc.privacy.views`) and are scored against
:class:`FedscGenTruth`: every client's cells, labels and FedscGen's train/validation
split, rebuilt from the run seed by :func:`fedscgen_truth` exactly as
:func:`fedsc.methods.fedscgen.run_fedscgen` draws them. The truth also stands in for what
an attacker is assumed to hold anyway: auxiliary labelled cells of the same tissue (the
other clients' cells, as a public atlas would be) and, for a client, its own cells.

Inside runs, :mod:`fedsc.privacy.in_run` records the views and builds the truth; offline,
:func:`capture_fedscgen_views` runs FedscGen through the same recorder
(:func:`fedsc.privacy.views.recording_aggregator`) and returns the record with the same
truth, so offline studies run the registered attacks on the same views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedsc._deprecation import renamed_arguments
from fedsc.data.clients import split_clients
from fedsc.data.validate import get_representation, obs_column
from fedsc.errors import FedscInputError
from fedsc.federation import State
from fedsc.methods.fedscgen import FedScGenConfig, FedScGenResult, run_fedscgen
from fedsc.methods.spec_fedscgen import SPEC
from fedsc.methods.vae import INIT, SPLIT, VAE, as_tensor, derive_generator, split_train_validation
from fedsc.privacy.attacks import Truth
from fedsc.privacy.views import (
    ObservedOp,
    ObserverView,
    RunRecord,
    observer_view,
    recording_aggregator,
)
from smpc.flatten import Spec, flatten

if TYPE_CHECKING:
    import anndata as ad

__all__ = [
    "STATE_TAGS",
    "FedScGenViews",
    "FedscGenTruth",
    "capture_fedscgen_views",
    "clear_row",
    "fedscgen_of",
    "fedscgen_truth",
    "global_model",
    "revealed_from_view",
    "state_ops",
]

#: Ledger tags of the model-state aggregations (FedAvg, FedAvgM).
STATE_TAGS = ("fedavg", "fedavgm")


@dataclass(frozen=True)
class FedscGenTruth:
    """What the runner holds about a FedscGen run (scoring, and the attacker's aux data).

    Attributes
    ----------
    config
        The config the method ran with (``dp`` set under DP: the GroupNorm variant).
    seed
        Run seed.
    n_genes
        Genes of the model.
    names
        Client index -> batch name, every client of the correction (held-out ones too).
    training
        Indices of the training clients.
    data, labels
        Each client's log-normalised expression (cells x genes) and cell-type labels.
    splits
        Each training client's (training, validation) positions, as FedscGen drew them.
    vocabulary
        The label vocabulary (public).
    """

    config: FedScGenConfig
    seed: int
    n_genes: int
    names: dict[int, str]
    training: tuple[int, ...]
    data: dict[int, torch.Tensor]
    labels: dict[int, np.ndarray]
    splits: dict[int, tuple[np.ndarray, np.ndarray]]
    vocabulary: list[str]

    def template(self) -> State:
        """The run's initial state (its structure restores flat states)."""
        model = self._variant(VAE(self.n_genes, self.config, derive_generator(self.seed, INIT)))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def spec(self) -> Spec:
        """How a flat state vector maps back to the VAE's tensors."""
        return flatten(self.template())[1]

    def model(self, flat: np.ndarray, spec: Spec | None = None) -> VAE:
        """A VAE (evaluation mode) holding the flat state ``flat``."""
        return self.model_from_state((spec or self.spec()).unflatten(np.asarray(flat)))

    def model_from_state(self, state: State) -> VAE:
        """A VAE (evaluation mode, DP variant under DP) holding ``state``."""
        model = self._variant(VAE(self.n_genes, self.config, derive_generator(0, INIT)))
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return model.eval()

    def _variant(self, model: VAE) -> VAE:
        if self.config.dp is None:
            return model
        from fedsc.methods.dp_sgd import to_dp_variant

        return to_dp_variant(model)


@renamed_arguments(label_key="labels_key")
def fedscgen_truth(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str,
    config: FedScGenConfig,
    seed: int,
    holdout: Sequence[str] = (),
    layer: str | None = None,
    client_order: Sequence[str] | None = None,
) -> FedscGenTruth:
    """The truth of a FedscGen run on ``adata`` (log-normalised, as it trained).

    Clients, numbering and seeded splits are rebuilt as
    :func:`fedsc.methods.fedscgen.run_fedscgen` builds them (inclusion ``"all"``):
    ``split_train_validation(n, fraction, derive_generator(seed, SPLIT, c))`` per training
    client. ``holdout``, ``layer`` and ``client_order`` as in ``run_fedscgen``.
    """
    train, held = split_clients(adata, batch_key, holdout=holdout, order=client_order)
    x_all = as_tensor(get_representation(adata, layer=layer))
    clients = sorted(train + held, key=lambda c: c.index)
    data = {c.index: x_all[torch.from_numpy(np.asarray(c.obs_indices))] for c in clients}
    labels = {
        c.index: obs_column(c.adata, labels_key, "labels_key").astype(str).to_numpy()
        for c in clients
    }
    splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in train:
        tr, val = split_train_validation(
            data[c.index].shape[0],
            config.validation_fraction,
            derive_generator(seed, SPLIT, c.index),
        )
        splits[c.index] = (tr.numpy(), val.numpy())
    return FedscGenTruth(
        config=config,
        seed=int(seed),
        n_genes=int(x_all.shape[1]),
        names={c.index: c.name for c in clients},
        training=tuple(c.index for c in train),
        data=data,
        labels=labels,
        splits=splits,
        vocabulary=sorted(set().union(*(set(v) for v in labels.values()))),
    )


# ------------------------------------------------------------------ reading a view
def fedscgen_of(truth: Truth | None) -> FedscGenTruth | None:
    """The FedscGen truth of ``truth`` (``None``: the attacks give no rows)."""
    fed = getattr(truth, "fedscgen", None)
    return fed if isinstance(fed, FedscGenTruth) else None


def state_ops(view: ObserverView) -> list[ObservedOp]:
    """The view's model-state aggregations (:data:`STATE_TAGS`, with a reference)."""
    return [
        o
        for o in view.operations
        if o.op == "weighted_mean" and o.tag in STATE_TAGS and o.reference is not None
    ]


def clear_row(o: ObservedOp, c: int) -> np.ndarray | None:
    """Client ``c``'s model in ``o`` if the view holds it in the clear, else ``None``."""
    if o.contributions is None:
        return None
    row = np.asarray(o.contributions[c], dtype=np.float64)
    return row if np.isfinite(row).all() else None


def global_model(view: ObserverView, fed: FedscGenTruth) -> VAE | None:
    """The last released global model the view holds (``None``: none)."""
    ops = [o for o in state_ops(view) if o.aggregate is not None]
    if not ops:
        return None
    return fed.model(max(ops, key=lambda o: o.index).aggregate)  # type: ignore[arg-type]


def revealed_from_view(view: ObserverView, truth: FedscGenTruth) -> dict[str, Any] | None:
    """FedscGen's revealed correction values as ``view`` holds them (``None``: not held).

    Read from the aggregates of the ``correction/*`` operations: ``vocabulary``,
    ``n_clients_per_type``, ``shared_types``, ``dominant`` (type -> client index),
    ``mean_latent`` (type -> M_t) and ``dominant_count`` (type -> revealed count).
    """
    by_tag = {o.tag: o for o in view.operations if o.aggregate is not None}
    presence = by_tag.get("correction/presence")
    if presence is None:
        return None
    vocab = list(truth.vocabulary)
    n_clients = np.rint(np.asarray(presence.aggregate)).astype(int)
    shared = [vocab[j] for j in np.flatnonzero(n_clients >= 2)]
    order = sorted(truth.names)
    dominant: dict[str, int] = {}
    mean_latent: dict[str, np.ndarray] = {}
    count: dict[str, float] = {}
    won, means = by_tag.get("correction/dominant"), by_tag.get("correction/mean_latent")
    if shared and (won is None or means is None):
        return None
    if shared and won is not None and means is not None:
        winners = np.rint(np.asarray(won.aggregate)).astype(int)
        dominant = {t: order[int(w)] for t, w in zip(shared, winners, strict=True)}
        # flatten() orders the keys: "count" (one per shared type), then "latent_sum".
        flat = np.asarray(means.aggregate)
        n = len(shared)
        sums = flat[n:].reshape(n, -1)
        for s, t in enumerate(shared):
            count[t] = float(flat[s])
            mean_latent[t] = sums[s] / flat[s]
    return {
        "vocabulary": vocab,
        "n_clients_per_type": {t: int(k) for t, k in zip(vocab, n_clients, strict=True)},
        "shared_types": shared,
        "dominant": dominant,
        "mean_latent": mean_latent,
        "dominant_count": count,
    }


# ------------------------------------------------------------------ offline runs
@dataclass(frozen=True)
class FedScGenViews:
    """One recorded FedscGen run (:func:`capture_fedscgen_views`).

    Attributes
    ----------
    result
        The run (its model, federation result and ``info``).
    truth
        The record (:class:`~fedsc.privacy.views.RunRecord`, every operation with every
        client's contribution) and the FedscGen truth (:class:`FedscGenTruth`): what the
        registered attacks take (``run_attacks(views.view(), views.truth, [...])``).
    """

    result: FedScGenResult
    truth: Truth

    @property
    def record(self) -> RunRecord:
        """The run's record."""
        assert self.truth.record is not None
        return self.truth.record

    @property
    def fedscgen(self) -> FedscGenTruth:
        """The clients' cells, labels and splits."""
        assert self.truth.fedscgen is not None
        return self.truth.fedscgen

    def view(self, observer: str = "coordinator", **options: Any) -> ObserverView:
        """What ``observer`` received (:func:`fedsc.privacy.views.observer_view`)."""
        return observer_view(self.record, observer, **options)


@renamed_arguments(label_key="labels_key")
def capture_fedscgen_views(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str,
    config: FedScGenConfig,
    seed: int = 0,
    backend: str = "plaintext",
    layer: str | None = None,
    client_order: Sequence[str] | None = None,
    backend_options: dict[str, Any] | None = None,
    mechanisms: Sequence[Any] | None = None,
    mechanism_seed: int | None = None,
) -> FedScGenViews:
    """Run FedscGen on every batch of ``adata`` through the recorder; return record + truth.

    No FedscGen code is changed: the run's aggregator is
    :func:`fedsc.privacy.views.recording_aggregator` (as inside runs), and the truth is
    :func:`fedscgen_truth` of the same cells. Every batch trains (no hold-out), all cells
    are used (inclusion ``"all"``).

    Parameters
    ----------
    adata
        Cells x genes, log-normalised in ``X`` (or ``layers[layer]``); not modified.
    batch_key, labels_key
        ``obs`` columns of the batch (one client each) and the cell type.
    config, seed
        The FedscGen run.
    backend
        ``"plaintext"`` or ``"crypten"`` (the parties' shares are not kept).
    layer, client_order
        As in :func:`fedsc.methods.fedscgen.run_fedscgen`.
    backend_options
        Options of :func:`smpc.make_aggregator`.
    mechanisms, mechanism_seed
        Mechanisms applied before the recorder (e.g. the ``gaussian`` mechanism of
        client-level DP, with ``config.dp={"level": "client", ...}`` for the GroupNorm
        variant), as for :func:`smpc.make_aggregator`.
    """
    agg, recorder = recording_aggregator(
        backend,
        mechanisms=mechanisms,
        mechanism_seed=mechanism_seed,
        record_shares=False,
        **(backend_options or {}),
    )
    a = adata.copy()
    public = {"method": SPEC.name, "reveals": sorted(SPEC.reveals), "seed": int(seed)}
    with agg:
        result = run_fedscgen(
            a,
            batch_key=batch_key,
            labels_key=labels_key,
            aggregator=agg,
            config=config,
            seed=seed,
            layer=layer,
            client_order=client_order,
            show_progress=False,
        )
        record = RunRecord.from_run(agg, recorder, public=public)
    if not any(o.tag in STATE_TAGS for o in record.operations):
        raise FedscInputError(
            f"no model-state aggregation (ledger tags {list(STATE_TAGS)}) was recorded; the "
            "attacks need FedscGen's FedAvg or FedAvgM strategy."
        )
    fed = fedscgen_truth(
        a,
        batch_key=batch_key,
        labels_key=labels_key,
        config=config,
        seed=seed,
        layer=layer,
        client_order=client_order,
    )
    return FedScGenViews(result, Truth(record, fedscgen=fed))
