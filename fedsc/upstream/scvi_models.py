"""scVI, LDVAE and scANVI upstreams: scvi-tools' own models, fitted on the pooled counts.

Nothing is re-implemented here: this module builds the AnnData scvi-tools expects (the raw
counts of the HVGs, the batch and, for scANVI, the labels), trains the library's model with
its defaults (``max_epochs`` etc. may be set through a run's ``upstream_params``) and reads
the latent means (``get_latent_representation``). New cells (continual training) are
embedded by scArches query mapping (``load_query_data``) where scvi-tools supports it
(scVI, scANVI; not LinearSCVI).

Seeds: ``scvi.settings.seed`` (torch, numpy and Python RNGs) before every training, so a
fit is deterministic given the seed and fedsc's thread setting (CPU only). Progress: one
log line per ``fedsc.settings.progress_interval`` seconds (``fedsc.progress`` logger); no
progress bars. scvi-tools is imported only here, on the first fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc._deprecation import renamed_arguments
from fedsc.errors import FedscInputError
from fedsc.upstream import CENTRAL, UpstreamSpec

if TYPE_CHECKING:
    from fedsc.upstream import UpstreamFit

__all__ = ["UNLABELED", "ScviUpstreamModel", "counts_matrix", "fit"]

logger = logging.getLogger("fedsc.progress")

#: scANVI's category for cells without a label (query cells, missing labels).
UNLABELED = "fedsc_unlabeled"

_MODELS = {"scvi": "SCVI", "ldvae": "LinearSCVI", "scanvi": "SCANVI"}


def _import_scvi() -> Any:
    try:
        import scvi
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise FedscInputError(
            "the scVI/LDVAE/scANVI upstreams need scvi-tools: pip install 'fedsc[scvi]' "
            f"(or make setup); import failed: {exc}"
        ) from None
    return scvi


def counts_matrix(adata: ad.AnnData) -> tuple[sp.csr_matrix, bool]:
    """Raw counts of ``adata``'s genes (``layers["counts"]`` if present, else ``X``).

    Returns the matrix and whether every value is an integer. Non-integer counts (e.g.
    Smart-seq2 estimated counts, as in the bundled pancreas) are modelled as they are, as
    scvi-tools does, with a warning; negative or non-finite values raise
    :class:`FedscInputError`.
    """
    source = "layers['counts']" if "counts" in adata.layers else "X"
    mat = adata.layers["counts"] if "counts" in adata.layers else adata.X
    mat = sp.csr_matrix(mat, dtype=np.float32)
    values = mat.data
    if values.size and (not np.isfinite(values).all() or values.min() < 0):
        raise FedscInputError(
            f"the scvi-tools upstreams model raw counts, but adata.{source} holds negative "
            "or non-finite values; pass raw counts in X (fedsc preprocesses them and keeps "
            "them in layers['counts'])."
        )
    integer = bool(np.array_equal(values, np.round(values)))
    if not integer:
        logger.warning(
            "adata.%s holds non-integer values; scvi-tools models them as counts (fine for "
            "estimated counts, wrong for normalised data)",
            source,
        )
    return mat, integer


def _frame(adata: ad.AnnData, batch_key: str, labels_key: str | None) -> pd.DataFrame:
    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    obs[batch_key] = adata.obs[batch_key].astype(str).to_numpy()
    if labels_key is not None:
        labels = adata.obs[labels_key]
        obs[labels_key] = np.where(labels.isna(), UNLABELED, labels.astype(str))
    return obs


class _LogEpochs:
    """A Lightning callback logging training progress every ``interval`` seconds."""

    def __new__(cls, what: str, interval: float) -> Any:
        from lightning.pytorch.callbacks import Callback

        class LogEpochs(Callback):
            def __init__(self) -> None:
                self.last = time.perf_counter()

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                now = time.perf_counter()
                epoch = trainer.current_epoch + 1
                if now - self.last >= interval or epoch == trainer.max_epochs:
                    self.last = now
                    loss = trainer.callback_metrics.get("elbo_train")
                    extra = "" if loss is None else f", elbo_train={float(loss):.4g}"
                    logger.info("%s: epoch %d/%d%s", what, epoch, trainer.max_epochs, extra)

        return LogEpochs()


def _train(model: Any, what: str, max_epochs: int | None, batch_size: int, **kw: Any) -> int:
    """Train ``model`` on the CPU without bars; return the epochs it ran."""
    from fedsc import settings

    if max_epochs is None:
        from scvi.model._utils import get_max_epochs_heuristic

        max_epochs = get_max_epochs_heuristic(model.adata.n_obs)
        if getattr(model, "was_pretrained", False):  # scANVI from scVI: scvi-tools' rule
            max_epochs = int(min(10, max(2, round(max_epochs / 3.0))))
    interval = float(settings.progress_interval)
    logger.info("%s: training %d epochs on %d cells", what, max_epochs, model.adata.n_obs)
    model.train(
        max_epochs=max_epochs,
        batch_size=batch_size,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[_LogEpochs(what, interval)],
        **kw,
    )
    return int(max_epochs)


@dataclass
class ScviUpstreamModel:
    """A fitted scvi-tools upstream: the model, its genes and how it was trained.

    Attributes
    ----------
    method, n_comps, seed, key
        Upstream name, latent dimensions, seed and ``obsm`` key written at fit time.
    genes
        The genes (``var_names``) the model reads, in order.
    model
        The trained scvi-tools model.
    batch_key, labels_key
        ``obs`` columns it read (``labels_key`` only for scANVI).
    settings
        The record written to ``uns["fedsc_embedding"][key]``.
    """

    method: str
    n_comps: int
    seed: int
    key: str
    genes: np.ndarray
    model: Any = field(repr=False)
    batch_key: str
    labels_key: str | None
    params: dict[str, Any]
    settings: dict[str, Any]
    spec: UpstreamSpec = field(repr=False)

    def _query(self, adata: ad.AnnData) -> ad.AnnData:
        names = adata.var_names.to_numpy(dtype=str)
        missing = np.setdiff1d(self.genes, names)
        if missing.size:
            raise FedscInputError(
                f"{missing.size} of the model's {self.genes.size} genes are not in "
                f"adata.var_names (e.g. {missing[:5].tolist()}); pass raw counts of new "
                "cells over all genes."
            )
        if self.batch_key not in adata.obs:
            raise FedscInputError(
                f"the {self.method} upstream reads adata.obs[{self.batch_key!r}] for every "
                "cell, including new ones; add the column."
            )
        sub = adata[:, adata.var_names.get_indexer(self.genes)]
        obs = _frame(sub, self.batch_key, None)
        if self.labels_key is not None:  # query cells are unlabeled (scANVI's query mapping)
            obs[self.labels_key] = UNLABELED
        return ad.AnnData(X=counts_matrix(sub)[0], obs=obs, var=pd.DataFrame(index=self.genes))

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        """Embed new cells by scArches query mapping (float32, ``n_obs × n_comps``).

        ``adata`` holds raw counts (``X``, or ``layers["counts"]``) including the model's
        genes and the batch column; the model's weights stay frozen except the new batches'
        (scvi-tools' ``load_query_data`` defaults), trained with weight decay 0 as in
        scvi-tools' scArches tutorial.
        """
        if adata.n_obs == 0:
            return np.zeros((0, self.n_comps), dtype=np.float32)
        if self.spec.new_cells != "query mapping":
            raise FedscInputError(
                f"the {self.method} upstream cannot embed new cells: scvi-tools has no query "
                "mapping for it; refit it on all cells (scenario: cumulative) or use scvi/"
                "scanvi."
            )
        scvi = _import_scvi()
        cls = type(self.model)
        query = self._query(adata)
        scvi.settings.seed = self.seed
        mapped = cls.load_query_data(query, self.model, accelerator="cpu")
        _train(
            mapped,
            f"{self.method} query mapping",
            self.params.get("query_max_epochs"),
            int(self.params.get("batch_size", 128)),
            plan_kwargs={"weight_decay": 0.0},
        )
        return np.asarray(mapped.get_latent_representation(), dtype=np.float32)


@renamed_arguments(label_key="labels_key")
def fit(
    adata: ad.AnnData,
    spec: UpstreamSpec,
    n_comps: int,
    seed: int,
    *,
    key: str,
    batch_key: str | None,
    labels_key: str | None,
    params: dict[str, Any],
) -> tuple[np.ndarray, ScviUpstreamModel]:
    """Train ``spec``'s scvi-tools model on ``adata``'s counts; return (latent means, model)."""
    if batch_key is None:
        raise FedscInputError(
            f"the {spec.name} upstream is batch-aware: pass batch_key (the obs column of "
            "each cell's batch)."
        )
    if batch_key not in adata.obs:
        raise FedscInputError(f"batch_key {batch_key!r} is not a column of adata.obs.")
    if not spec.label_aware:
        labels_key = None
    elif labels_key is None or labels_key not in adata.obs:
        raise FedscInputError(
            f"the {spec.name} upstream trains on cell-type labels: pass labels_key (an "
            f"adata.obs column; got {labels_key!r}). Note that its embedding then has seen "
            "the labels the bio-conservation metrics score; use scvi for a label-free one."
        )
    scvi = _import_scvi()
    from fedsc import settings

    settings.apply_threads()
    counts, integer = counts_matrix(adata)
    data = ad.AnnData(
        X=counts,
        obs=_frame(adata, batch_key, labels_key),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
    )
    arch = {k: int(params[k]) for k in ("n_hidden", "n_layers") if k in params}
    batch_size = int(params.get("batch_size", 128))
    max_epochs = params.get("max_epochs")
    epochs: dict[str, int] = {}
    scvi.settings.seed = seed
    if spec.name == "ldvae":
        scvi.model.LinearSCVI.setup_anndata(data, batch_key=batch_key)
        model = scvi.model.LinearSCVI(data, n_latent=n_comps, **arch)
        epochs["LinearSCVI"] = _train(model, "ldvae", max_epochs, batch_size)
    else:
        scvi.model.SCVI.setup_anndata(data, batch_key=batch_key, labels_key=labels_key)
        model = scvi.model.SCVI(data, n_latent=n_comps, **arch)
        epochs["SCVI"] = _train(model, "scvi", max_epochs, batch_size)
        if spec.name == "scanvi":
            model = scvi.model.SCANVI.from_scvi_model(model, unlabeled_category=UNLABELED)
            scvi.settings.seed = seed
            epochs["SCANVI"] = _train(model, "scanvi", params.get("scanvi_max_epochs"), batch_size)
    emb = np.asarray(model.get_latent_representation(), dtype=np.float32)
    record = {
        "method": spec.name,
        "n_comps": int(n_comps),
        "seed": int(seed),
        "library": f"scvi-tools {scvi.__version__}",
        "model": type(model).__name__,
        "input": "raw counts of the HVGs" + ("" if integer else " (non-integer values)"),
        "batch_key": batch_key,
        "labels_key": labels_key,
        "uses_labels": labels_key is not None,
        "epochs": epochs,
        "params": dict(params),
        "computed": CENTRAL,
    }
    out = ScviUpstreamModel(
        method=spec.name,
        n_comps=int(n_comps),
        seed=int(seed),
        key=key,
        genes=adata.var_names.to_numpy(dtype=str).copy(),
        model=model,
        batch_key=batch_key,
        labels_key=labels_key,
        params=dict(params),
        settings=record,
        spec=spec,
    )
    return emb, out


if TYPE_CHECKING:
    _FIT: UpstreamFit = fit  # mypy checks fit against the upstream contract
