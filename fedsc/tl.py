"""Scanpy-style public API: ``fedsc.tl.<method>(adata, ...)`` writes into ``adata``.

As scanpy's tools, a call writes its outputs into ``adata`` and returns ``None``; pass
``copy=True`` to work on (and get back) a copy, ``return_model=True`` to get the fitted
model (with ``copy=True``: ``(adata, model)``). ``key_added`` is the ``obsm``
key of the embedding (``"X_foo"``; expression goes to ``layers["foo"]``, the record to
``uns["foo"]``); ``labels_key`` names the cell types (``label_key=`` is its deprecated
spelling).

Every registered method (``fedsc.methods.REGISTRY``) is callable here by name: the three
built-in ones have documented signatures below, any other registered method is served by
:func:`apply` through ``fedsc.tl.<name>``. A federated method runs with an aggregation
backend chosen by name (``smpc.BACKENDS``: ``"plaintext"``, ``"crypten"``) or passed as
an :class:`smpc.Aggregator`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anndata as ad

import smpc
from fedsc._deprecation import caller_stacklevel, renamed_arguments
from fedsc.backend import aggregator_for
from fedsc.errors import FedscInputError
from fedsc.methods import RunInputs, get_method

__all__ = ["apply", "fedscgen", "scbatchprox", "scgen"]


@renamed_arguments(label_key="labels_key")
def apply(
    method: str,
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    use_rep: str | None = None,
    layer: str | None = None,
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    holdout: str | Sequence[str] = (),
    inclusion: str = "all",
    key_added: str | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
    extra: dict[str, Any] | None = None,
    copy: bool = False,
    return_model: bool = False,
    **params: Any,
) -> Any:
    """Run the registered ``method`` on ``adata`` (its outputs are written into ``adata``).

    Parameters
    ----------
    method
        A name in ``fedsc.methods.REGISTRY``.
    adata
        Prepared cells: an embedding in ``obsm[use_rep]`` or expression in ``X``, as the
        method's ``input`` kind says.
    batch_key, labels_key
        ``adata.obs`` columns with each cell's batch (client) and cell type
        (``label_key=``: deprecated spelling).
    use_rep, layer
        Embedding (``obsm`` key or ``"X"``) / layer the method reads.
    backend, backend_options
        Aggregation backend name (or an open :class:`smpc.Aggregator`) and its options;
        ignored by centralized methods.
    seed
        Run seed.
    config, **params
        The method's config dataclass and/or overrides of its fields.
    holdout, inclusion
        Held-out batches and inclusion scenario (methods that support them).
    key_added
        The ``obsm`` key of the embedding instead of the method's default, as in scanpy:
        ``"X_foo"`` writes ``obsm["X_foo"]``, expression to ``layers["foo"]``, the record
        to ``uns["foo"]``. A name without ``X_`` (``"foo"``) is still read as that stem,
        with a ``FutureWarning``.
    overwrite
        Replace outputs whose keys exist already. Without it, existing keys are refused,
        except the outputs of an earlier call of the same method under the same name
        (``uns["<name>"]["fedsc_method"]`` records it), which a rerun replaces.
    extra
        Method-specific run options that are not config fields.
    copy
        Work on a copy of ``adata`` and return it (``adata`` is left unchanged).
    return_model
        Return the fitted model (with ``copy``: ``(copy, model)``); by default nothing
        (``None``) or the copy is returned, as scanpy's tools do.

    Returns
    -------
    ``None``; the copy with ``copy=True``; the model with ``return_model=True`` (what the
    method's run function returns).
    """
    spec = get_method(method)
    cfg = spec.make_config(params, config)
    for arg, value in (("use_rep", use_rep), ("layer", layer), ("batch_key", batch_key),
                       ("labels_key", labels_key)):  # fmt: skip
        if value is not None and not isinstance(value, str):
            raise FedscInputError(
                f"{arg} must be one name (a string), got {type(value).__name__} {value!r}; "
                f"pass e.g. {arg}={_first(value)!r}."
            )
    _check_in_memory(adata)
    if copy:
        adata = adata.copy()
    # the run config's own checks of the shared settings (one path for every entry point)
    from fedsc.backend import check_backend
    from fedsc.run.config import check_backend_options, check_seed

    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = int(seed)  # numpy integers too
    seed = check_seed(seed)
    if isinstance(backend, str):
        check_backend(backend)
        backend_options = check_backend_options(backend, backend_options) or None
    holdout = _names(holdout, "holdout")
    key_added = _output_name(spec, key_added)
    _check_outputs_free(adata, spec, key_added, overwrite)
    _check_model_size(spec, cfg, adata)
    inputs: dict[str, Any] = dict(
        batch_key=batch_key,
        labels_key=labels_key,
        seed=seed,
        use_rep=use_rep,
        layer=layer,
        holdout=holdout,
        inclusion=inclusion,
        key_added=key_added,
        show_progress=show_progress,
        extra=dict(extra or {}),
    )
    if not spec.federated:
        result = spec.fit(adata, RunInputs(**inputs), cfg)
        _mark_outputs(adata, spec, key_added)
        return _returned(adata, result, copy, return_model)
    from fedsc.run_privacy import check_tl_dp

    if not isinstance(backend, smpc.Aggregator):
        check_tl_dp(cfg, None)  # before a backend starts
    with aggregator_for(backend, backend_options) as agg:
        check_tl_dp(cfg, agg)
        result = spec.fit(adata, RunInputs(aggregator=agg, **inputs), cfg)
    _mark_outputs(adata, spec, key_added)
    return _returned(adata, result, copy, return_model)


def _returned(adata: ad.AnnData, model: Any, copy: bool, return_model: bool) -> Any:
    """What a ``fedsc.tl`` call returns (see :func:`apply`'s ``copy`` and ``return_model``)."""
    if copy:
        return (adata, model) if return_model else adata
    return model if return_model else None


#: ``uns["<name>"]`` key naming the method whose outputs fedsc.tl wrote under ``name``.
OUTPUT_MARK = "fedsc_method"


def _mark_outputs(adata: Any, spec: Any, name: str | None) -> None:
    """Record in ``uns["<name>"]`` which method wrote the outputs (a rerun may replace them)."""
    name = name or spec.name
    record = adata.uns.get(name)
    if isinstance(record, dict):
        record[OUTPUT_MARK] = spec.name
    elif record is None:
        adata.uns[name] = {OUTPUT_MARK: spec.name}


def _check_in_memory(adata: Any) -> None:
    """A backed AnnData (``read_h5ad(..., backed="r")``) is refused, naming the fix.

    The methods read ``X`` as an in-memory matrix and write ``obsm``/``layers``; a backed
    object gave h5py errors deep inside training.
    """
    if not isinstance(adata, ad.AnnData):
        raise FedscInputError(
            f"adata must be an AnnData, got {type(adata).__name__}; read one with "
            "anndata.read_h5ad(path)."
        )
    if adata.isbacked:
        raise FedscInputError(
            f"adata is backed by {adata.filename} (read with backed=...): fedsc.tl needs it "
            "in memory; use adata = adata.to_memory() (or anndata.read_h5ad(path)) first."
        )


def _output_name(spec: Any, key_added: Any) -> str | None:
    """``key_added`` as the output's base name (``"X_foo"`` and ``"foo"`` -> ``"foo"``)."""
    if key_added is None:
        return None
    if not isinstance(key_added, str) or not key_added.removeprefix("X_").strip():
        raise FedscInputError(
            f"key_added must be a non-empty name (a string), got {key_added!r}; e.g. "
            f"key_added='X_{spec.name}_run2' (the obsm key)."
        )
    if not key_added.startswith("X_"):
        warnings.warn(
            f"key_added={key_added!r} is read as the outputs' stem (obsm['X_{key_added}'], "
            f"layers['{key_added}']); pass key_added='X_{key_added}', the obsm key as in "
            f"scanpy: a name without 'X_' will be the obsm key itself in a future version.",
            FutureWarning,
            stacklevel=caller_stacklevel(),
        )
    name = key_added.removeprefix("X_")
    if "/" in name:
        raise FedscInputError(
            f"key_added={key_added!r} contains '/', which h5ad files cannot store in a key; "
            "use e.g. '_' instead."
        )
    return name


def _output_keys(spec: Any, name: str | None) -> list[str]:
    """The ``obsm`` keys and ``layers/<name>`` the method writes under ``name``."""
    keys = list(spec.outputs)
    if name is None:
        return keys
    return [
        {f"X_{spec.name}": f"X_{name}", f"layers/{spec.name}": f"layers/{name}"}.get(k, k)
        for k in keys
    ]


def _check_outputs_free(adata: Any, spec: Any, name: str | None, overwrite: bool) -> None:
    """Refuse replacing existing keys, unless ``overwrite`` or a rerun under the same name.

    ``key_added="X_pca"`` on scBatchProx replaced its own input embedding without a word.
    """
    if overwrite:
        return
    taken = []
    for key in _output_keys(spec, name):
        if key.startswith("layers/"):
            if key.removeprefix("layers/") in adata.layers:
                taken.append(f"layers[{key.removeprefix('layers/')!r}]")
        elif key in adata.obsm:
            taken.append(f"obsm[{key!r}]")
    record = adata.uns.get(name or spec.name)
    earlier = isinstance(record, dict) and record.get(OUTPUT_MARK) == spec.name
    if taken and not earlier:
        verb = "exist in adata and are" if len(taken) > 1 else "exists in adata and is"
        raise FedscInputError(
            f"{spec.name} would replace {', '.join(taken)}, which already {verb} not an "
            f"earlier {spec.name} output; choose another key_added (e.g. "
            f"key_added='X_{spec.name}_2') or pass overwrite=True to replace it."
        )


def _check_model_size(spec: Any, config: Any, adata: Any) -> None:
    """A VAE-sized model against ``fedsc.settings.max_model_params`` (fedsc.resources)."""
    from fedsc.resources import check_parameters, vae_parameters

    if not (hasattr(config, "hidden") and hasattr(config, "latent")):
        return
    check_parameters(
        vae_parameters(adata.n_vars, config.hidden, config.latent),
        f"{spec.name} with hidden={list(config.hidden)}, latent={config.latent} on "
        f"{adata.n_vars} genes",
    )


def _first(value: Any) -> Any:
    try:
        return next(iter(value))
    except (TypeError, StopIteration):
        return "X_pca"


def _names(value: str | Sequence[str], arg: str) -> tuple[str, ...]:
    """A batch name or a list of them as a tuple; duplicates are an error.

    A single string is one name: ``holdout="celseq"`` holds out the batch ``celseq``, not
    the batches ``c``, ``e``, ``l``...; an integer is one (integer-labelled) batch.
    """
    if isinstance(value, int | str) and not isinstance(value, bool):
        names: tuple[str, ...] = (str(value),)  # one batch (integer labels too)
    elif isinstance(value, list | tuple | set) and all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in value
    ):
        names = tuple(str(v) for v in value)
    else:
        raise FedscInputError(
            f"{arg} must be a batch name or a list of them (e.g. {arg}='celseq' or "
            f"{arg}=[3, 4] for integer labels), got {value!r}."
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FedscInputError(f"{arg} lists {dup} more than once; list each batch once.")
    return names


def scbatchprox(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    use_rep: str = "X_pca",
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    key_added: str = "X_scbatchprox",
    overwrite: bool = False,
    show_progress: bool | None = None,
    copy: bool = False,
    return_model: bool = False,
    **params: Any,
) -> Any:
    """Refine ``adata.obsm[use_rep]`` with federated per-batch FiLM adapters.

    Parameters
    ----------
    adata
        Cells of all batches; each batch is a client.
    batch_key
        ``adata.obs`` column naming each cell's batch.
    use_rep
        The fixed upstream embedding (e.g. ``"X_pca"``, ``"X_scVI"``).
    backend
        ``"plaintext"``, ``"crypten"`` or an :class:`smpc.Aggregator`.
    backend_options
        Options for :func:`smpc.make_aggregator` (e.g. ``{"mode": "secure"}``).
    seed
        Run seed (training split, minibatch order).
    config, **params
        :class:`~fedsc.methods.scbatchprox.ScBatchProxConfig` and/or overrides such as
        ``mu=0`` or ``rounds=10``.
    key_added
        The ``obsm`` key of the refined embedding (``"X_foo"``; the record goes to
        ``uns["foo"]``).
    overwrite
        Replace existing keys (e.g. ``key_added="X_pca"`` replaces the input); without it
        they are refused unless they hold an earlier scBatchProx output.
    copy, return_model
        As in :func:`apply`.

    Returns
    -------
    ``None`` (the copy with ``copy=True``); the fitted
    :class:`~fedsc.methods.scbatchprox.ScBatchProx` with ``return_model=True``.
    """
    return apply(
        "scbatchprox",
        adata,
        batch_key=batch_key,
        use_rep=use_rep,
        backend=backend,
        backend_options=backend_options,
        seed=seed,
        config=config,
        key_added=key_added,
        overwrite=overwrite,
        show_progress=show_progress,
        copy=copy,
        return_model=return_model,
        **params,
    )


@renamed_arguments(label_key="labels_key")
def fedscgen(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    holdout: str | list[str] | tuple[str, ...] = (),
    inclusion: str = "all",
    layer: str | None = None,
    snapshot_every_round: bool = False,
    key_added: str = "X_fedscgen",
    overwrite: bool = False,
    show_progress: bool | None = None,
    copy: bool = False,
    return_model: bool = False,
    **params: Any,
) -> Any:
    """Federated scGen training + the FedscGen correction workflow.

    Writes ``adata.obsm["X_fedscgen"]`` (shifted latent) and ``adata.layers["fedscgen"]``
    (corrected expression). ``adata.X`` must hold log-normalised expression
    (log1p of CP10k); raw counts, an embedding or scaled data are refused with a message
    saying what was found (:mod:`fedsc.data.input_kind`). A diverging training run raises
    :class:`~fedsc.methods.health.TrainingDivergedError` naming ``lr`` and writes nothing.

    Parameters
    ----------
    backend, backend_options
        Aggregation backend name (or an :class:`smpc.Aggregator`) and its options.
    config, **params
        :class:`~fedsc.methods.fedscgen.FedScGenConfig` and/or overrides
        (``rounds=8, local_epochs=2, hidden=(800, 800)``...).
    holdout
        Batches that do not train but are corrected: one name (``"celseq"``) or a list.
    inclusion
        ``"all"``, ``"combined"`` or ``"dropped"`` (minority cell types).
    key_added, overwrite, copy, return_model
        The ``obsm`` key of the latent (``"X_foo"``: expression in ``layers["foo"]``,
        the record in ``uns["foo"]``), whether existing keys may be replaced, and what is
        returned (see :func:`apply`).

    Client-level DP (``dp={"level": "client", ...}``) needs an aggregator carrying the
    ``gaussian`` mechanism, which adds the noise; without one it is refused (run it with
    a run config instead: :func:`fedsc.run.execute.execute_run`, ``fedsc run``).

    Returns
    -------
    ``None`` (the copy with ``copy=True``); with ``return_model=True`` the
    :class:`~fedsc.methods.fedscgen.FedScGenResult` (model, federation result, info).
    """
    return apply(
        "fedscgen",
        adata,
        batch_key=batch_key,
        labels_key=labels_key,
        layer=layer,
        backend=backend,
        backend_options=backend_options,
        seed=seed,
        config=config,
        holdout=holdout,
        inclusion=inclusion,
        key_added=key_added,
        overwrite=overwrite,
        show_progress=show_progress,
        copy=copy,
        return_model=return_model,
        extra={"snapshot_every_round": snapshot_every_round},
        **params,
    )


@renamed_arguments(label_key="labels_key")
def scgen(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    seed: int = 0,
    config: Any = None,
    inclusion: str = "all",
    layer: str | None = None,
    key_added: str = "X_scgen",
    overwrite: bool = False,
    show_progress: bool | None = None,
    copy: bool = False,
    return_model: bool = False,
    **params: Any,
) -> Any:
    """Centralized scGen (the baseline): train, then ``batch_removal``.

    Writes ``adata.obsm["X_scgen"]`` and ``adata.layers["scgen"]`` (``key_added="X_foo"``:
    ``obsm["X_foo"]``, ``layers["foo"]``; ``overwrite``, ``copy`` and ``return_model`` as
    in :func:`apply`: the model with ``return_model=True``).
    ``adata.X`` (or ``layers[layer]``) must hold log-normalised expression: raw counts or
    PCs are refused with a message naming what was found (:mod:`fedsc.data.input_kind`).
    """
    return apply(
        "scgen",
        adata,
        batch_key=batch_key,
        labels_key=labels_key,
        layer=layer,
        seed=seed,
        config=config,
        inclusion=inclusion,
        key_added=key_added,
        overwrite=overwrite,
        show_progress=show_progress,
        copy=copy,
        return_model=return_model,
        **params,
    )


def __getattr__(name: str) -> Callable[..., Any]:
    """``fedsc.tl.<name>`` for any other registered method: :func:`apply` bound to it."""
    from fedsc.methods import REGISTRY

    if name in REGISTRY:
        return partial(apply, name)
    raise AttributeError(f"module 'fedsc.tl' has no attribute {name!r}")
