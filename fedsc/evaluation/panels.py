"""Metric panels by name, and :func:`evaluate`, the one dispatcher over them.

A panel is a function ``panel(X, batch, labels, *, X_pre=None, seed=0) -> DataFrame``
returning tidy rows ``panel, metric, value`` for one embedding ``X`` (cells x dims) with
per-cell ``batch`` and ``labels`` strings; ``X_pre`` is the pre-integration embedding for
metrics that compare against it (scIB's PCR comparison). Panels are switched on and off
by name (``panels: [scib, downstream]`` in a run config); a new panel is one
:func:`register_panel` call. A panel that also takes a ``sensitivity`` keyword can measure
its discontinuous metrics' jitter (:mod:`fedsc.evaluation.sensitivity`); ``evaluate(...,
sensitivity=True)`` asks every panel that can.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeGuard

import numpy as np
import pandas as pd

from fedsc._deprecation import renamed_arguments
from fedsc.data.access import obs_column, representation
from fedsc.errors import FedscInputError
from fedsc.evaluation._inputs import check_embedding
from fedsc.evaluation._missing import MISSING_ATTR, scale_problem
from fedsc.evaluation.fedscgen_panel import METRICS as FEDSCGEN_METRICS
from fedsc.evaluation.fedscgen_panel import fedscgen_panel
from fedsc.evaluation.scib_panel import AGGREGATES, BATCH_METRICS, BIO_METRICS, scib_panel
from fedsc.evaluation.sensitivity import delta_values, perturb
from fedsc.registry import Registry

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "MISSING_ATTR",
    "PANELS",
    "Panel",
    "SensitivePanel",
    "check_panels",
    "evaluate",
    "missing_reasons",
    "register_panel",
]


class Panel(Protocol):
    """``panel(X, batch, labels, *, X_pre=None, seed=0)``: one panel's metric rows.

    ``X`` is the embedding evaluated (cells x dims), ``batch`` and ``labels`` each cell's
    batch and cell type (strings), ``X_pre`` the uncorrected input when the panel compares
    with it. Returns a DataFrame with columns ``panel``, ``metric``, ``value`` (a value it
    cannot compute is NaN, its reason in ``df.attrs[MISSING_ATTR]``).
    """

    def __call__(
        self,
        X: np.ndarray,
        batch: np.ndarray,
        labels: np.ndarray,
        /,
        *,
        X_pre: np.ndarray | None = None,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The panel's rows for one embedding."""
        ...


class SensitivePanel(Protocol):
    """A :class:`Panel` that also takes ``sensitivity``.

    With ``True`` it adds one row ``<metric>_perturbation_delta`` per discontinuous metric
    (:mod:`fedsc.evaluation.sensitivity`).
    """

    def __call__(
        self,
        X: np.ndarray,
        batch: np.ndarray,
        labels: np.ndarray,
        /,
        *,
        X_pre: np.ndarray | None = None,
        seed: int = 0,
        sensitivity: bool = False,
    ) -> pd.DataFrame:
        """The panel's rows for one embedding, with the perturbation deltas if asked."""
        ...


#: Metric panels by name.
PANELS: Registry[Panel] = Registry("metric panel")


def register_panel(name: str, panel: Panel) -> Panel:
    """Register a metric panel under ``name``; a name already taken is an error.

    Parameters
    ----------
    name
        Name used in run configs, studies and ``fedsc run --panels``.
    panel
        ``panel(X, batch, labels, *, X_pre=None, seed=0)`` returning a DataFrame with
        columns ``panel``, ``metric``, ``value``. If it also takes ``sensitivity=False``,
        ``evaluate(..., sensitivity=True)`` passes ``True`` and it adds one row
        ``<metric>_perturbation_delta`` per discontinuous metric
        (:mod:`fedsc.evaluation.sensitivity`).
    """
    return PANELS.register(name, panel)


def _scib(
    X: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    *,
    X_pre: np.ndarray | None = None,
    seed: int = 0,
    sensitivity: bool = False,
) -> pd.DataFrame:
    """The scIB panel (scib-metrics); uses ``X_pre`` for the PCR comparison."""
    return scib_panel(X, batch, labels, X_pre=X_pre, seed=seed, sensitivity=sensitivity)


def _fedscgen(
    X: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    *,
    X_pre: np.ndarray | None = None,
    seed: int = 0,
    sensitivity: bool = False,
) -> pd.DataFrame:
    """The FedscGen panel (EBM, kNN accuracy, ASW, NMI, ARI, LISI...)."""
    return fedscgen_panel(X, batch, labels, seed=seed, sensitivity=sensitivity)


def _downstream(
    X: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    *,
    X_pre: np.ndarray | None = None,
    seed: int = 0,
    sensitivity: bool = False,
) -> pd.DataFrame:
    """Leave-one-batch-out MLP cell-type classifier accuracy.

    With ``sensitivity`` the MLPs are trained again on the perturbed embedding (the
    accuracy counts argmax predictions: discontinuous), which doubles the panel's cost.
    """
    from fedsc.evaluation.downstream import downstream_accuracy  # torch: start-up time

    df = downstream_accuracy(X, batch, labels, seed=seed)
    if not sensitivity:
        return df
    base = dict(zip(df["metric"], df["value"], strict=True))
    again = downstream_accuracy(perturb(check_embedding(X), seed), batch, labels, seed=seed)
    deltas = delta_values(base, dict(zip(again["metric"], again["value"], strict=True)), base)
    rows = pd.DataFrame(
        {"panel": "downstream", "metric": list(deltas), "value": list(deltas.values())}
    )
    return pd.concat([df, rows], ignore_index=True)


register_panel("scib", _scib)
register_panel("fedscgen", _fedscgen)
register_panel("downstream", _downstream)


def check_panels(panels: Sequence[str] | str) -> list[str]:
    """``panels`` as a list of registered names; a clear error for unknown or none."""
    if isinstance(panels, str):
        panels = [panels]
    panels = list(panels)
    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise FedscInputError(
            f"metric panels {panels} invalid (unknown: {unknown}); choose from {PANELS.names()}."
        )
    return panels


@renamed_arguments(label_key="labels_key")
def evaluate(
    adata: AnnData,
    *,
    rep: str,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    panels: Sequence[str] | str = ("scib",),
    X_pre_rep: str | None = None,
    seed: int = 0,
    sensitivity: bool = False,
) -> pd.DataFrame:
    """Evaluate one representation of ``adata`` with the chosen metric panels.

    Parameters
    ----------
    adata
        Cells with the representation, batch and label columns.
    rep
        ``adata.obsm`` key of the embedding, ``"X"``, or ``"layers/<name>"`` (e.g. the
        corrected expression ``"layers/fedscgen"``).
    batch_key, labels_key
        ``adata.obs`` columns with batch and cell type (``label_key=``: deprecated
        spelling).
    panels
        Registered panel names (:data:`PANELS`: ``"scib"``, ``"fedscgen"``,
        ``"downstream"``, ...), run in this order.
    X_pre_rep
        Representation of the pre-integration embedding, for the scIB PCR comparison.
    seed
        Passed to every panel.
    sensitivity
        Also measure each discontinuous metric's jitter: panels that support it (a
        ``sensitivity`` keyword; all built-in ones) recompute those metrics on the embedding
        plus ``1e-6 * std * N(0, 1)`` noise drawn from ``seed`` and add one row
        ``<metric>_perturbation_delta`` = ``|metric(perturbed) - metric|`` each, after
        their own rows (:mod:`fedsc.evaluation.sensitivity`; ``fedsc.results`` for how
        downstream tables treat them). Continuous metrics get no row.

    Returns
    -------
    DataFrame with columns ``embedding`` (== ``rep``), ``panel``, ``metric``, ``value``.
    A metric that cannot be computed has value NaN; ``attrs["missing_reasons"]`` maps its
    ``(panel, metric)`` to the reason (see :func:`missing_reasons`). An embedding with
    coordinates beyond ``1e15`` gets every metric missing with that reason.
    """
    names = check_panels(panels)
    funcs = [PANELS.get(p) for p in names]
    X = representation(adata, rep, "rep")
    batch_col = obs_column(adata, batch_key, "batch_key")
    X_pre = representation(adata, X_pre_rep, "X_pre_rep") if X_pre_rep is not None else None
    if batch_col.nunique(dropna=True) < 2:
        raise FedscInputError(
            f"adata.obs[{batch_key!r}] has fewer than 2 batches; batch metrics need at least 2."
        )
    batch = batch_col.astype(str).to_numpy()
    labels = obs_column(adata, labels_key, "labels_key").astype(str).to_numpy()
    problem = scale_problem(check_embedding(X, f"representation {rep!r}"), adata.obs_names)
    frames, reasons = [], {}
    for name, func in zip(names, funcs, strict=True):
        if problem is not None:  # nothing meaningful can be computed: all missing, one reason
            metrics = _expected_metrics(name, X_pre is not None)
            df = pd.DataFrame({"panel": name, "metric": metrics, "value": np.nan})
            panel_reasons = dict.fromkeys(metrics, problem)
        else:
            if sensitivity and _takes_sensitivity(func):
                df = func(X, batch, labels, X_pre=X_pre, seed=seed, sensitivity=True)
            else:
                df = func(X, batch, labels, X_pre=X_pre, seed=seed)
            panel_reasons = dict(df.attrs.get(MISSING_ATTR, {}))
        for panel, metric, value in zip(df["panel"], df["metric"], df["value"], strict=True):
            if not np.isfinite(value):
                reasons[(str(panel), str(metric))] = panel_reasons.get(
                    metric, f"the computation returned {value}"
                )
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs = {}
    out.insert(0, "embedding", rep)
    out.attrs[MISSING_ATTR] = reasons
    return out


def _takes_sensitivity(func: Panel) -> TypeGuard[SensitivePanel]:
    """Whether a panel function accepts the ``sensitivity`` keyword."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return "sensitivity" in params


def _expected_metrics(panel: str, with_pre: bool) -> list[str]:
    """The metric rows a built-in panel returns (one ``"all"`` row for other panels)."""
    if panel == "scib":
        batch = [m for m in BATCH_METRICS if with_pre or m != "pcr_comparison"]
        return [*BIO_METRICS, *batch, *AGGREGATES]
    if panel == "fedscgen":
        return list(FEDSCGEN_METRICS)
    if panel == "downstream":
        return ["lobo_accuracy"]
    return ["all"]


def missing_reasons(rows: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(panel, metric) -> reason for the missing values of :func:`evaluate`'s rows.

    Rows without recorded reasons (e.g. read back from a CSV) get a generic one for every
    non-finite value.
    """
    known = dict(rows.attrs.get(MISSING_ATTR, {}))
    out = {}
    for panel, metric, value in zip(rows["panel"], rows["metric"], rows["value"], strict=True):
        if not np.isfinite(value):
            out[(str(panel), str(metric))] = known.get((str(panel), str(metric)), "value missing")
    return out
