"""A study: datasets x methods x variants x seeds, read from YAML, expanded into runs.

Example::

    study: privacy_ablation
    datasets: [pancreas]
    seeds: [42, 123, 456]
    defaults: {batch_key: batch, label_key: cell_type}
    methods:
      scbatchprox:
        settings: {upstream: pca}
        variants:
          plaintext: {backend: plaintext}
          crypten: {backend: crypten}
      fedscgen:
        settings: {params: {rounds: 2, local_epochs: 1}}
        grid: {params.rounds: [1, 2], params.local_epochs: [1, 2]}

``settings`` apply to every run of a method; each variant's settings are merged on top
(``params`` dicts merge key by key). ``grid`` adds one variant per combination (named
``rounds=1,local_epochs=2``), merged with each listed variant (or alone).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedsc.errors import FedscInputError
from fedsc.methods import REGISTRY
from fedsc.run_config import RunConfig

STUDY_KEYS = {"study", "description", "datasets", "seeds", "defaults", "methods"}
METHOD_KEYS = {"settings", "variants", "grid"}


@dataclass
class Study:
    """A parsed study config."""

    name: str
    datasets: list[str]
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Study:
        unknown = sorted(set(data) - STUDY_KEYS)
        if unknown:
            raise FedscInputError(f"unknown study key(s) {unknown}; valid: {sorted(STUDY_KEYS)}.")
        missing = [k for k in ("study", "datasets", "seeds", "methods") if k not in data]
        if missing:
            raise FedscInputError(f"study config lacks {missing}; see experiments/*.yaml.")
        seeds = data["seeds"]
        if isinstance(seeds, int):
            raise FedscInputError("seeds must be a list of integers, e.g. [42, 123, 456].")
        for name, spec in data["methods"].items():
            REGISTRY.get(name)  # unknown names: a clear error listing the registered ones
            bad = sorted(set(spec or {}) - METHOD_KEYS)
            if bad:
                raise FedscInputError(
                    f"method {name!r}: unknown key(s) {bad}; valid: {sorted(METHOD_KEYS)}."
                )
        return cls(
            name=str(data["study"]),
            datasets=[str(d) for d in data["datasets"]],
            seeds=[int(s) for s in seeds],
            methods={k: dict(v or {}) for k, v in data["methods"].items()},
            defaults=dict(data.get("defaults") or {}),
            description=str(data.get("description", "")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Study:
        path = Path(path)
        if not path.is_file():
            raise FedscInputError(f"study file {path} not found.")
        with path.open() as fh:
            return cls.from_dict(yaml.safe_load(fh))

    def variants(self, method: str) -> dict[str, dict[str, Any]]:
        """Variant name -> settings for one method (grid combinations expanded)."""
        spec = self.methods[method]
        base = dict(spec.get("variants") or {"default": {}})
        grid = spec.get("grid") or {}
        if not grid:
            return {k: dict(v or {}) for k, v in base.items()}
        keys = list(grid)
        out = {}
        for combo in itertools.product(*(grid[k] for k in keys)):
            label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo, strict=True))
            point: dict[str, Any] = {}
            for k, v in zip(keys, combo, strict=True):
                _set_dotted(point, k, v)
            for vname, vset in base.items():
                name = label if list(base) == ["default"] else f"{vname},{label}"
                out[name] = _merge(vset or {}, point)
        return out

    def expand(self) -> list[RunConfig]:
        """Every run of the study, in a fixed order."""
        runs = []
        for dataset in self.datasets:
            for method, spec in self.methods.items():
                settings = _merge(self.defaults, spec.get("settings") or {})
                for variant, vset in self.variants(method).items():
                    for seed in self.seeds:
                        cfg = _merge(settings, vset)
                        cfg.update(
                            method=method,
                            dataset=dataset,
                            seed=seed,
                            study=self.name,
                            variant=variant,
                        )
                        runs.append(RunConfig.from_dict(cfg))
        return runs


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge b onto a; nested dicts (params, backend_options) merge key by key."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    target[parts[-1]] = value
