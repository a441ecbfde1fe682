"""The configuration of one run: dataset, method, variant, backend, seed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedsc.backend import check_backend, check_mechanisms
from fedsc.data.inclusion import SCENARIOS as INCLUSION_SCENARIOS
from fedsc.errors import FedscInputError
from fedsc.methods import get_method, method_names

#: Settings left out of the run id while they hold their default, so adding them did not
#: change the id (and resume) of any earlier run.
_UNHASHED_DEFAULTS: dict[str, Any] = {"mechanisms": [], "attacks": [], "dp": None}


@dataclass
class RunConfig:
    """Everything that determines one run; its hash is the run id.

    Attributes
    ----------
    method
        A registered method (``fedsc.methods.REGISTRY``: ``"scbatchprox"``, ``"fedscgen"``,
        ``"scgen"``...).
    dataset
        ``"pancreas"`` / ``"cellbench_3cl"`` (bundled), ``"shared:<file>"`` (in
        ``../shared/data``) or a path to an ``.h5ad`` file.
    batch_key, label_key
        ``obs`` columns with each cell's batch (client) and cell type.
    use_rep
        Embedding methods: the input embedding (``obsm`` key or ``"X"``). ``None``:
        compute ``upstream`` from the counts.
    upstream, n_comps, n_top_genes
        Upstream embedding computed when ``use_rep`` is None (a name in
        ``fedsc.upstream.EMBEDDING_METHODS``: PCA/ICA/FA), its dims, and the HVGs.
    backend, backend_options
        Aggregation backend (a name in ``smpc.BACKENDS``) and its options.
    mechanisms
        Privacy mechanisms around the aggregator (names in ``smpc.mechanisms``, or
        ``{name: {options}}``), applied in order.
    seed
        Run seed.
    params
        Method hyper-parameters (e.g. ``{"mu": 0.0}``, ``{"rounds": 8, "local_epochs": 2}``),
        validated against the method's config dataclass when the config is created.
    holdout, inclusion
        Held-out batches and inclusion scenario (methods whose spec supports them).
    scenario, stages
        Dataset evolution (methods whose spec lists the scenario, e.g. scBatchProx's
        ``"cumulative"``/``"continual"``) over ``stages`` (lists of batches in arrival
        order); evaluated on all cells after the last stage.
    panels
        Metric panels (names in ``fedsc.evaluation.PANELS``); default per method.
    study, variant
        Labels for tidy results.
    attacks
        Privacy attacks run on the recorded observer views (names in
        ``fedsc.privacy.in_run.IN_RUN_ATTACKS``); their rows join the tidy results.
    dp
        Differential privacy (``fedsc.privacy.accounting.DPConfig`` mapping, e.g.
        ``{level: client, target_epsilon: 4, clip: 0.1, delta: 1e-3}``) or ``None`` (off).
    """

    method: str
    dataset: str = "pancreas"
    batch_key: str = "batch"
    label_key: str = "cell_type"
    use_rep: str | None = None
    upstream: str = "pca"
    n_comps: int = 40
    n_top_genes: int = 2000
    backend: str = "plaintext"
    backend_options: dict[str, Any] = field(default_factory=dict)
    mechanisms: list[Any] = field(default_factory=list)
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    holdout: list[str] = field(default_factory=list)
    inclusion: str = "all"
    panels: list[str] | None = None
    scenario: str | None = None
    stages: list[list[str]] | None = None
    study: str = "adhoc"
    variant: str = "default"
    attacks: list[str] = field(default_factory=list)
    dp: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from fedsc.evaluation.panels import check_panels
        from fedsc.upstream import EMBEDDING_METHODS

        spec = get_method(self.method)
        self.panels = check_panels(spec.panels if self.panels is None else self.panels)
        check_backend(self.backend)
        if not spec.federated and self.backend != "plaintext":
            raise FedscInputError(
                f"{self.method} is centralized and uses no aggregation backend; set "
                "backend: plaintext."
            )
        self.mechanisms = check_mechanisms(self.mechanisms)
        if self.mechanisms and not spec.federated:
            raise FedscInputError(f"{self.method} is centralized; it takes no mechanisms.")
        if self.use_rep is None or self.scenario is not None:
            EMBEDDING_METHODS.get(self.upstream)
        spec.make_config(self.params)  # unknown or invalid params fail here, not mid-sweep
        from fedsc.privacy.in_run import check_run_privacy

        self.attacks, self.dp = check_run_privacy(self.attacks, self.dp, spec)
        self.holdout = [str(h) for h in self.holdout]
        if self.holdout and not spec.holdout:
            raise FedscInputError(
                f"{self.method} does not support held-out batches; methods that do: "
                f"{_supporting('holdout')}."
            )
        if self.inclusion not in INCLUSION_SCENARIOS:
            raise FedscInputError(
                f"unknown inclusion scenario {self.inclusion!r}; choose one of "
                f"{list(INCLUSION_SCENARIOS)}."
            )
        if self.inclusion != "all" and not spec.inclusion:
            raise FedscInputError(
                f"{self.method} does not support inclusion scenarios; methods that do: "
                f"{_supporting('inclusion')}."
            )
        if self.scenario is not None:
            spec.scenario(self.scenario)
            if not self.stages:
                raise FedscInputError(
                    "a dataset-evolution scenario needs stages, e.g. [[indrop], [celseq]]."
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FedscInputError(
                f"unknown run setting(s) {unknown}; valid settings: {sorted(names)}."
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as plain data (YAML/JSON)."""
        return asdict(self)

    @property
    def run_id(self) -> str:
        """Stable hash of the full config (same config -> same id, across machines)."""
        data = {
            k: v
            for k, v in self.to_dict().items()
            if not (k in _UNHASHED_DEFAULTS and v == _UNHASHED_DEFAULTS[k])
        }
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _supporting(capability: str) -> list[str]:
    return [n for n in method_names() if getattr(get_method(n), capability)]
