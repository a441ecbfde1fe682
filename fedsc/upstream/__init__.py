"""Upstream embeddings by name: PCA, ICA, FA (scikit-learn) and scVI, LDVAE, scANVI (scvi-tools).

:data:`EMBEDDING_METHODS` maps a name (``upstream: pca`` in a run config, ``fedsc run
--upstream``) to an :class:`UpstreamSpec`, which says what the upstream reads (log-normalised
expression or counts), whether it needs the batch or the cell-type labels, its library's
defaults, the options a run may set (``upstream_params``), how it is fitted and how it
embeds cells it was not fitted on (continual training).
:func:`fedsc.preprocessing.fit_embedding` fits one. Neither scikit-learn nor scvi-tools
loads before an upstream is fitted.

Every upstream here is computed centrally, on the pooled cells, as in the scBatchProx paper;
the record each fit writes (``uns["fedsc_embedding"][key]``, and ``run.json``'s
``upstream``) says so. A federatedly trained upstream would be another registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fedsc.errors import FedscInputError
from fedsc.registry import Registry, resolve
from fedsc.upstream import linear

if TYPE_CHECKING:
    import anndata as ad
    import numpy as np

__all__ = [
    "CENTRAL",
    "EMBEDDING_METHODS",
    "Estimator",
    "EstimatorFactory",
    "FittedUpstream",
    "UpstreamFit",
    "UpstreamSpec",
    "check_upstream_params",
    "register_embedding",
    "register_upstream",
]


class Estimator(Protocol):
    """A scikit-learn-style linear embedding (PCA, FastICA, FactorAnalysis)."""

    def fit_transform(self, X: np.ndarray, /) -> np.ndarray:
        """Fit on ``X`` (cells x genes) and return its embedding (cells x components)."""
        ...

    def transform(self, X: np.ndarray, /) -> np.ndarray:
        """Embed cells the estimator was not fitted on."""
        ...


class FittedUpstream(Protocol):
    """What a non-linear upstream's ``fit`` returns beside the embedding."""

    key: str
    n_comps: int
    #: Its settings, recorded in ``adata.uns["fedsc_embedding"][key]``.
    settings: dict[str, Any]

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        """Embed cells it was not fitted on."""
        ...


class UpstreamFit(Protocol):
    """``fit(adata, spec, n_comps, seed, *, key, batch_key, labels_key, params)``.

    Fits the upstream on ``adata`` and returns ``(embedding, model)`` without writing
    into ``adata`` (:func:`fedsc.preprocessing.fit_embedding` stores them).
    """

    def __call__(
        self,
        adata: ad.AnnData,
        spec: UpstreamSpec,
        n_comps: int,
        seed: int,
        /,
        *,
        key: str,
        batch_key: str | None,
        labels_key: str | None,
        params: dict[str, Any],
    ) -> tuple[np.ndarray, FittedUpstream]:
        """Fit; return the embedding and the fitted model."""
        ...


#: ``factory(n_comps, seed, shape) -> Estimator`` (``shape``: the matrix it will fit).
EstimatorFactory = Callable[[int, int, tuple[int, int]], Estimator]

#: What the run record says about where an upstream was computed.
CENTRAL = (
    "centrally, on the pooled cells of all batches (as in the scBatchProx paper), before "
    "the federation"
)


@dataclass(frozen=True)
class UpstreamSpec:
    """An upstream embedding: what it reads and needs, its defaults, how it fits and embeds.

    Attributes
    ----------
    name
        Registry name; the embedding is stored as ``obsm["X_<name>"]``.
    input
        ``"expression"`` (log-normalised HVG expression, ``X``) or ``"counts"`` (raw counts
        of the same genes: ``layers["counts"]`` of :func:`fedsc.preprocessing.preprocess`
        output, else ``X``).
    estimator
        Linear upstreams: the scikit-learn estimator factory (``fit_transform``/``transform``).
    fit
        Other upstreams: ``fit(adata, spec, n_comps, seed, batch_key=, labels_key=,
        params=)`` (or ``"module:function"``) returning a model with ``key``, ``n_comps``
        and ``transform(adata)``, having written nothing.
    batch_aware, label_aware
        The upstream reads the batch (needs ``batch_key``) / the cell-type labels (needs
        ``labels_key``; its embedding has seen the labels the evaluation scores).
    library
        The library whose model it is (e.g. ``"scikit-learn"``, ``"scvi-tools"``).
    dims
        Default dimensions (40 for PCA/ICA/FA, as in the paper; the library's latent size
        for the scvi-tools models).
    defaults
        The library's defaults that apply (recorded in every fit's settings).
    params
        The options a run may set through ``upstream_params`` (e.g. ``max_epochs``).
    new_cells
        How cells outside the fit are embedded: ``"projection"`` (the fitted linear map),
        ``"query mapping"`` (scArches, the library's ``load_query_data``) or ``None``
        (not supported: refit on all cells, i.e. cumulative retraining).
    description
        One line for ``--help`` and the docs.
    """

    name: str
    input: Literal["expression", "counts"] = "expression"
    estimator: EstimatorFactory | None = None
    fit: UpstreamFit | str | None = None
    batch_aware: bool = False
    label_aware: bool = False
    library: str = "scikit-learn"
    dims: int = 40
    defaults: Mapping[str, Any] = field(default_factory=dict)
    params: tuple[str, ...] = ()
    new_cells: str | None = "projection"
    description: str = ""

    def __post_init__(self) -> None:
        if (self.estimator is None) == (self.fit is None):
            raise ValueError(
                f"upstream {self.name!r}: give exactly one of estimator (a scikit-learn "
                "factory) or fit (a function returning a fitted model)."
            )
        if self.input not in ("expression", "counts"):
            raise ValueError(
                f"upstream {self.name!r}: input must be 'expression' or 'counts', got "
                f"{self.input!r}."
            )
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def fit_function(self) -> UpstreamFit:
        """The fit function (imported on first use when named as ``"module:function"``)."""
        assert self.fit is not None, "linear upstreams are fitted through their estimator"
        return resolve(self.fit)


#: Upstream embeddings by name. Add one with :func:`register_upstream` or
#: :func:`register_embedding` (a scikit-learn-style estimator factory).
EMBEDDING_METHODS: Registry[UpstreamSpec] = Registry("embedding method")


def register_upstream(spec: UpstreamSpec) -> UpstreamSpec:
    """Register an upstream embedding (usable as ``upstream:`` in run configs)."""
    return EMBEDDING_METHODS.register(spec.name, spec)


def register_embedding(name: str, factory: EstimatorFactory) -> None:
    """Register a batch-agnostic upstream ``name`` from an estimator factory.

    Parameters
    ----------
    name
        Lower-case name; the embedding is stored as ``obsm["X_<name>"]``.
    factory
        ``factory(n_comps, seed, shape)`` returning an unfitted estimator with
        ``fit_transform`` and ``transform`` (``shape`` is the (cells, genes) matrix shape).
    """
    register_upstream(UpstreamSpec(name, estimator=factory, description="user-registered"))


def check_upstream_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` checked against what upstream ``name`` accepts; a clear error otherwise."""
    spec = EMBEDDING_METHODS.get(name)
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise FedscInputError(
            f"upstream_params must be a mapping (e.g. {{max_epochs: 50}}), got {params!r}."
        )
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise FedscInputError(
            f"upstream {name!r} does not take {unknown}; it takes {list(spec.params) or 'none'}."
        )
    return dict(params)


_LINEAR = {
    "pca": "PCA (scikit-learn, exact solver), batch-agnostic",
    "ica": "FastICA (scikit-learn, unit-variance whitening), batch-agnostic",
    "fa": "factor analysis (scikit-learn), batch-agnostic",
}
for _name, _what in _LINEAR.items():
    register_upstream(UpstreamSpec(_name, estimator=getattr(linear, _name), description=_what))

# scvi-tools' own models (imported on first fit). Defaults are scvi-tools 1.4's: n_latent 10
# (a run's n_comps sets it), max_epochs min(400, 400 * 20000 / n_cells), batch size 128;
# scANVI starts from a trained scVI model (scvi-tools' recommended workflow) and trains
# min(10, max(2, scVI's epochs / 3)) epochs.
_SCVI_DEFAULTS = {
    "n_latent": 10,
    "n_hidden": 128,
    "n_layers": 1,
    "max_epochs": "min(400, round(400 * 20000 / n_cells))",
    "batch_size": 128,
}
_SCVI_PARAMS = ("max_epochs", "query_max_epochs", "n_hidden", "n_layers", "batch_size")
for _spec in (
    UpstreamSpec(
        "scvi",
        input="counts",
        fit="fedsc.upstream.scvi_models:fit",
        batch_aware=True,
        library="scvi-tools",
        dims=10,
        defaults={**_SCVI_DEFAULTS, "gene_likelihood": "zinb"},
        params=_SCVI_PARAMS,
        new_cells="query mapping",
        description="scVI (scvi-tools), batch-aware VAE on counts",
    ),
    UpstreamSpec(
        "ldvae",
        input="counts",
        fit="fedsc.upstream.scvi_models:fit",
        batch_aware=True,
        library="scvi-tools",
        dims=10,
        defaults={**_SCVI_DEFAULTS, "gene_likelihood": "nb", "model": "LinearSCVI"},
        params=tuple(p for p in _SCVI_PARAMS if p != "query_max_epochs"),
        new_cells=None,  # scvi-tools' LinearSCVI has no load_query_data (no ArchesMixin)
        description="LDVAE (scvi-tools LinearSCVI), batch-aware linearly decoded VAE on counts",
    ),
    UpstreamSpec(
        "scanvi",
        input="counts",
        fit="fedsc.upstream.scvi_models:fit",
        batch_aware=True,
        label_aware=True,
        library="scvi-tools",
        dims=10,
        defaults={
            **_SCVI_DEFAULTS,
            "gene_likelihood": "zinb",
            "scanvi_max_epochs": "min(10, max(2, round(scVI max_epochs / 3)))",
        },
        params=(*_SCVI_PARAMS, "scanvi_max_epochs"),
        new_cells="query mapping",
        description="scANVI (scvi-tools), batch- and label-aware VAE on counts (uses labels)",
    ),
):
    register_upstream(_spec)
