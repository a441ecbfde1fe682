"""What the framework needs to know about a method: :class:`MethodSpec` and :class:`RunInputs`.

A method is registered once (``fedsc.methods.register(spec)``); the CLI, run-config
validation, studies, the runner and ``fedsc.tl`` all read its spec, so no other file
names a method.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from fedsc._deprecation import caller_stacklevel, renamed_arguments
from fedsc.errors import FedscInputError
from fedsc.registry import resolve

if TYPE_CHECKING:
    import anndata as ad

    from smpc import Aggregator

__all__ = [
    "INPUT_KINDS",
    "MethodSpec",
    "RunFunction",
    "RunInputs",
    "ScenarioFunction",
    "config_from_kwargs",
]

#: What a method reads from the prepared AnnData:
#: ``"embedding"``: ``obsm[inputs.use_rep]`` (upstream PCA/ICA/FA or the user's embedding);
#: ``"expression"``: log-normalised HVG expression in ``X``;
#: ``"counts"``: the raw counts in ``X`` as given.
INPUT_KINDS: tuple[str, ...] = ("embedding", "expression", "counts")


def config_from_kwargs(config_cls: type, config: Any, kwargs: Mapping[str, Any]) -> Any:
    """Build a config dataclass from an instance and/or keyword overrides.

    Parameters
    ----------
    config_cls
        The method's config dataclass.
    config
        A ``config_cls`` instance to start from, or ``None`` (the defaults).
    kwargs
        Overrides; names that are not fields of ``config_cls`` are a clear error.
    """
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise FedscInputError(
            f"unknown {config_cls.__name__} option(s) {unknown}; valid options: {sorted(names)}."
        )
    base = {} if config is None else {f.name: getattr(config, f.name) for f in fields(config)}
    try:
        return config_cls(**{**base, **kwargs})
    except TypeError as exc:  # e.g. a list where a number is expected
        raise FedscInputError(
            f"invalid {config_cls.__name__} option(s) {dict(kwargs)}: {exc}"
        ) from None


@dataclass(frozen=True)
class RunInputs:
    """The common arguments every method's run function receives.

    Attributes
    ----------
    batch_key, labels_key
        ``obs`` columns naming each cell's batch (client) and cell type (``label_key``,
        the old name, is accepted and read with a ``FutureWarning``).
    aggregator
        The open :class:`smpc.Aggregator` (``None`` for centralized methods).
    seed
        Run seed.
    use_rep
        ``"embedding"`` methods: the ``obsm`` key (or ``"X"``) to refine.
    layer
        Read ``layers[layer]`` instead of ``X`` (expression methods).
    holdout
        Batches that do not train but are corrected (methods with ``holdout=True``).
    inclusion
        Cell-type inclusion scenario (methods with ``inclusion=True``).
    stages, upstream, n_comps, n_top_genes
        Dataset-evolution scenarios: batch stages and the upstream embedding settings.
    key_added
        Output name instead of the method's default (``fedsc.tl``'s ``key_added``).
    show_progress
        Progress bars; ``None`` shows them only on a terminal.
    extra
        Method-specific run options that are not part of its config
        (e.g. FedscGen's ``snapshot_every_round``).
    """

    batch_key: str = "batch"
    labels_key: str = "cell_type"
    aggregator: Aggregator | None = None
    seed: int = 0
    use_rep: str | None = None
    layer: str | None = None
    holdout: tuple[str, ...] = ()
    inclusion: str = "all"
    stages: tuple[tuple[str, ...], ...] | None = None
    upstream: str = "pca"
    n_comps: int = 40
    n_top_genes: int = 2000
    key_added: str | None = None
    show_progress: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def federated_aggregator(self, method: str) -> Aggregator:
        """The aggregator of a federated method's run; ``None`` here is a clear error."""
        if self.aggregator is None:
            raise FedscInputError(
                f"{method} is federated: its run needs an aggregator (RunInputs.aggregator, "
                "e.g. smpc.make_aggregator('plaintext'))."
            )
        return self.aggregator

    @property
    def label_key(self) -> str:
        """Deprecated spelling of :attr:`labels_key` (``FutureWarning``)."""
        warnings.warn(
            "RunInputs.label_key is deprecated; use labels_key.",
            FutureWarning,
            stacklevel=caller_stacklevel(),
        )
        return self.labels_key


#: ``RunInputs(label_key=...)`` still works, with a FutureWarning naming ``labels_key``.
RunInputs.__init__ = renamed_arguments(label_key="labels_key")(RunInputs.__init__)  # type: ignore[method-assign]


class RunFunction(Protocol):
    """``run(adata, inputs, config)``: fit the method on the prepared cells.

    It writes the method's ``outputs`` into ``adata`` and returns its fitted model (what
    ``fedsc.tl`` hands back with ``return_model=True``). ``config`` is the method's own
    config class (:attr:`MethodSpec.config`), so it is typed by the method.
    """

    def __call__(self, adata: ad.AnnData, inputs: RunInputs, config: Any, /) -> Any:
        """Fit on ``adata``; write the outputs into it; return the model."""
        ...


class ScenarioFunction(Protocol):
    """``scenario(adata, inputs, config)``: a dataset-evolution scenario over ``inputs.stages``.

    Returns the cells to evaluate, holding the upstream embedding
    ``obsm["X_<inputs.upstream>"]`` and the method's outputs.
    """

    def __call__(self, adata: ad.AnnData, inputs: RunInputs, config: Any, /) -> ad.AnnData:
        """Run every stage; return the last stage's cells."""
        ...


@dataclass(frozen=True)
class MethodSpec:
    """A registered batch-correction method.

    Attributes
    ----------
    name
        Registry name (``fedsc run NAME``, ``methods: {NAME: ...}`` in studies).
    config
        Its typed config dataclass (or ``"module:Class"``, imported on first use); run
        configs' ``params`` are validated against it up front.
    input
        One of :data:`INPUT_KINDS`: what the runner prepares for it.
    run
        ``run(adata, inputs: RunInputs, config) -> result`` (or ``"module:function"``):
        fits the method on the prepared ``adata`` and writes :attr:`outputs` into it.
    federated
        Whether it aggregates through an :class:`smpc.Aggregator` (centralized methods get
        ``inputs.aggregator = None`` and only the ``plaintext`` backend).
    outputs
        Representations it writes: ``obsm`` keys and ``"layers/<name>"``; they must
        include the embedding ``"X_<name>"`` (the default, alone).
    evaluate
        The output the metric panels evaluate; default the first output.
    panels
        Default metric panels (names in ``fedsc.evaluation.PANELS``).
    holdout, inclusion
        Whether it supports held-out batches / cell-type inclusion scenarios.
    scenarios
        Dataset-evolution scenarios: name -> ``scenario(adata, inputs, config) -> AnnData``
        (or ``"module:function"``) returning the cells to evaluate with the upstream
        embedding ``obsm["X_<inputs.upstream>"]`` and the method's outputs.
    options
        Config fields offered as ``fedsc run`` flags (``"local_epochs"`` ->
        ``--local-epochs``); every field is reachable with ``--param KEY=VALUE``.
    description
        One line for ``fedsc run --help``.
    reveals
        What a federated run of the method lets its observers see, as capability names
        that attacks declare they read (:class:`fedsc.privacy.attacks.Attack`
        ``requires``): an attack runs on a method only if the method reveals all it
        requires, so the privacy layer never names a method. Built in: ``"film_rows"``
        (FedAvg of per-batch FiLM tables, client b changing only row b, trained with
        public Adam steps), ``"vae_state"`` (FedAvg of a :class:`fedsc.methods.vae.VAE`
        state, each client training on its part of the seeded train/validation split of
        :func:`fedsc.methods.vae.split_train_validation`), ``"correction_values"``
        (FedscGen's revealed correction: holders per cell type, dominant clients, their
        counts and mean latents). Attacks that require nothing (update recovery, party
        shares) run on every federated method.
    dp_levels
        The DP levels a run config may ask of the method (:mod:`fedsc.privacy.run_dp`):
        ``"client"`` (the aggregator's ``gaussian`` mechanism; every federated method) and
        ``"cell"`` (DP-SGD inside the method's local training; the method's config takes
        ``dp`` and records its ε in ``adata.uns[<name>]["dp"]``).
    """

    name: str
    config: type | str
    input: str
    run: RunFunction | str
    federated: bool = True
    outputs: tuple[str, ...] = ()
    evaluate: str | None = None
    panels: tuple[str, ...] = ("scib",)
    holdout: bool = False
    inclusion: bool = False
    scenarios: Mapping[str, ScenarioFunction | str] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    description: str = ""
    reveals: frozenset[str] = frozenset()
    dp_levels: frozenset[str] = frozenset({"client"})

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a method name must be a non-empty string, got {self.name!r}.")
        if self.input not in INPUT_KINDS:
            raise ValueError(
                f"method {self.name!r}: input {self.input!r} is not one of {list(INPUT_KINDS)}."
            )
        outputs = tuple(self.outputs) or (f"X_{self.name}",)
        if f"X_{self.name}" not in outputs:
            raise ValueError(
                f"method {self.name!r}: outputs {list(outputs)} must include the embedding "
                f"'X_{self.name}' (sweeps store it for the report's UMAPs)."
            )
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "panels", tuple(self.panels))
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "scenarios", dict(self.scenarios))
        object.__setattr__(self, "reveals", frozenset(self.reveals))
        object.__setattr__(self, "dp_levels", frozenset(self.dp_levels))
        if self.evaluate is None:
            object.__setattr__(self, "evaluate", outputs[0])
        elif self.evaluate not in outputs:
            raise ValueError(
                f"method {self.name!r}: evaluate={self.evaluate!r} is not one of its "
                f"outputs {list(outputs)}."
            )

    @property
    def evaluated(self) -> str:
        """The output the metric panels evaluate (``evaluate``, else the first output)."""
        return self.evaluate if self.evaluate is not None else self.outputs[0]

    @property
    def config_class(self) -> type:
        """The config dataclass (imported on first use)."""
        return resolve(self.config)

    def make_config(self, params: Mapping[str, Any] | None = None, base: Any = None) -> Any:
        """The validated config: ``base`` (or the defaults) with ``params`` on top."""
        return config_from_kwargs(self.config_class, base, dict(params or {}))

    def fit(self, adata: ad.AnnData, inputs: RunInputs, config: Any) -> Any:
        """Run the method on the prepared ``adata`` (writes :attr:`outputs`)."""
        return resolve(self.run)(adata, inputs, config)

    def scenario(self, name: str) -> ScenarioFunction:
        """The dataset-evolution scenario ``name``; unsupported names are a clear error."""
        if name not in self.scenarios:
            raise FedscInputError(
                f"scenario {name!r} is not available for {self.name}; "
                f"it supports {sorted(self.scenarios) or 'none'}."
            )
        return resolve(self.scenarios[name])
