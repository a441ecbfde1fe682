"""The configuration of one run: dataset, method, variant, backend, seed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedsc.errors import FedscInputError
from fedsc.methods import REGISTRY, get_method

METHODS = tuple(REGISTRY)


@dataclass
class RunConfig:
    """Everything that determines one run; its hash is the run id.

    Attributes
    ----------
    method
        ``"scbatchprox"``, ``"fedscgen"`` or ``"scgen"`` (centralized baseline).
    dataset
        ``"pancreas"`` / ``"cellbench_3cl"`` (bundled), ``"shared:<file>"`` (in
        ``../shared/data``) or a path to an ``.h5ad`` file.
    batch_key, label_key
        ``obs`` columns with each cell's batch (client) and cell type.
    use_rep
        scBatchProx: the upstream embedding (``obsm`` key or ``"X"``). ``None``: compute
        ``upstream`` from the counts.
    upstream, n_comps, n_top_genes
        Upstream embedding computed when ``use_rep`` is None (PCA/ICA/FA, 40 dims, HVGs).
    backend, backend_options
        Aggregation backend (``"plaintext"``, ``"crypten"``) and its options.
    seed
        Run seed.
    params
        Method hyper-parameters (e.g. ``{"mu": 0.0}``, ``{"rounds": 8, "local_epochs": 2}``).
    holdout, inclusion
        FedscGen: held-out batches and inclusion scenario.
    scenario, stages
        scBatchProx dataset evolution: ``"cumulative"`` or ``"continual"`` over ``stages``
        (lists of batches in arrival order); evaluated on all cells after the last stage.
    panels
        Metric panels (``"scib"``, ``"fedscgen"``, ``"downstream"``); default per method.
    study, variant
        Labels for tidy results.
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
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    holdout: list[str] = field(default_factory=list)
    inclusion: str = "all"
    panels: list[str] | None = None
    scenario: str | None = None
    stages: list[list[str]] | None = None
    study: str = "adhoc"
    variant: str = "default"

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        if self.panels is None:
            self.panels = list(spec.panels)
        if not spec.federated and self.backend != "plaintext":
            raise FedscInputError(
                f"{self.method} is centralized and uses no aggregation backend; set "
                "backend: plaintext."
            )
        if self.holdout and self.method != "fedscgen":
            raise FedscInputError("held-out batches are a FedscGen option (method: fedscgen).")
        self.holdout = [str(h) for h in self.holdout]
        if self.scenario is not None:
            if spec.input != "embedding" or self.scenario not in ("cumulative", "continual"):
                raise FedscInputError(
                    f"scenario {self.scenario!r} is not available for {self.method}; "
                    "scBatchProx supports 'cumulative' and 'continual'."
                )
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
        return asdict(self)

    @property
    def run_id(self) -> str:
        """Stable hash of the full config (same config -> same id, across machines)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
