"""A study: datasets x methods x variants x seeds, read from YAML, expanded into runs.

An example study file::

    study: privacy_ablation
    datasets: [pancreas]
    seeds: [42, 123, 456]
    defaults: {batch_key: batch, labels_key: cell_type}

Methods
-------
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
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedsc.errors import FedscInputError
from fedsc.methods import REGISTRY
from fedsc.run.config import RunConfig, check_seed

logger = logging.getLogger(__name__)

STUDY_KEYS = {"study", "description", "datasets", "seeds", "defaults", "methods"}
METHOD_KEYS = {"settings", "variants", "grid"}
#: Run settings a study sets itself (per run); defaults, settings and variants cannot.
STUDY_SET = {"method", "dataset", "seed", "study", "variant"}
#: More runs per variant than this is probably a typo (``seeds: [range...]``): a warning.
MANY_SEEDS = 1000


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys and reads ``1e-3`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``); ``1e-3`` was the
    string ``"1e-3"``.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise FedscInputError(
                f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one "
                f"mapping (first on line {seen[key]}); later values would silently replace "
                "earlier ones: rename or merge them."
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(path: str | Path) -> Any:
    """A YAML file's data; syntax errors and duplicate keys name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise FedscInputError(f"study file {path} is a folder; pass a .yaml file.")
    if not path.is_file():
        raise FedscInputError(f"study file {path} not found.")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise FedscInputError(f"{path}: not a text (YAML) file.") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except FedscInputError as exc:
        raise FedscInputError(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise FedscInputError(
            f"{path}: YAML syntax error at {where}: {exc.problem or exc.context}."
        ) from None
    except yaml.YAMLError as exc:
        raise FedscInputError(f"{path}: YAML error: {exc}") from None


@dataclass
class Study:
    """A parsed study config."""

    name: str
    datasets: list[str]
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "study"

    @classmethod
    def from_dict(cls, data: Any, source: str = "study") -> Study:
        """Check ``data`` against the study schema; every message names ``source`` and the key."""

        def fail(key: str, message: str) -> FedscInputError:
            return FedscInputError(f"{source}: {key}: {message}" if key else f"{source}: {message}")

        if data is None:
            raise fail("", "the study is empty; see experiments/*.yaml for an example.")
        if not isinstance(data, Mapping):
            raise fail(
                "",
                f"the top level must be a mapping with keys {sorted(STUDY_KEYS)}, got a "
                f"{_kind(data)}; see experiments/*.yaml.",
            )
        unknown = sorted(map(str, set(data) - STUDY_KEYS))
        if unknown:
            raise fail("", f"unknown study key(s) {unknown}; valid: {sorted(STUDY_KEYS)}.")
        missing = [k for k in ("study", "datasets", "seeds", "methods") if k not in data]
        if missing:
            raise fail("", f"study config lacks {missing}; see experiments/*.yaml.")
        name = data["study"]
        if isinstance(name, bool) or not isinstance(name, str | int) or str(name) == "":
            raise fail("study", f"must be a name (a string), got {name!r}.")
        description = data.get("description") or ""
        if not isinstance(description, str):
            raise fail("description", f"must be a string, got {_kind(description)}.")
        datasets = _name_list(data["datasets"], "datasets", fail, example="[pancreas]")
        seeds = _seed_list(data["seeds"], fail)
        defaults = _mapping(data.get("defaults"), "defaults", fail)
        _refuse_study_set(defaults, "defaults", fail)
        methods_data = data["methods"]
        if not isinstance(methods_data, Mapping) or not methods_data:
            raise fail(
                "methods",
                f"must be a non-empty mapping of method name -> settings (e.g. "
                f"{{scbatchprox: {{}}}}), got {methods_data!r}.",
            )
        methods: dict[str, dict[str, Any]] = {}
        for mname, spec in methods_data.items():
            key = f"methods.{mname}"
            if not isinstance(mname, str) or mname not in REGISTRY:
                raise fail(key, f"unknown method {mname!r}; choose one of {REGISTRY.names()}.")
            spec = _mapping(spec, key, fail)
            bad = sorted(map(str, set(spec) - METHOD_KEYS))
            if bad:
                raise fail(key, f"unknown key(s) {bad}; valid: {sorted(METHOD_KEYS)}.")
            settings = _mapping(spec.get("settings"), f"{key}.settings", fail)
            _refuse_study_set(settings, f"{key}.settings", fail)
            variants = _mapping(spec.get("variants"), f"{key}.variants", fail)
            for vname, vset in variants.items():
                vkey = f"{key}.variants.{vname}"
                vset = _mapping(vset, vkey, fail)
                _refuse_study_set(vset, vkey, fail)
            grid = _mapping(spec.get("grid"), f"{key}.grid", fail)
            for gkey, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise fail(
                        f"{key}.grid.{gkey}",
                        f"must be a non-empty list of values (e.g. [1, 2]), got {values!r}.",
                    )
                if gkey.split(".")[0] in STUDY_SET:
                    raise fail(f"{key}.grid.{gkey}", "is set by the study itself.")
            methods[mname] = dict(spec)
        return cls(
            name=str(name),
            datasets=datasets,
            seeds=seeds,
            methods=methods,
            defaults=defaults,
            description=description,
            source=source,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Study:
        """Read and check a study file (see :meth:`from_dict`)."""
        return cls.from_dict(load_yaml(path), source=str(path))

    def variants(self, method: str) -> dict[str, dict[str, Any]]:
        """Variant name -> settings for one method (grid combinations expanded)."""
        spec = self.methods[method]
        base = dict(spec.get("variants") or {"default": {}})
        grid = spec.get("grid") or {}
        if not grid:
            return {str(k): dict(v or {}) for k, v in base.items()}
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

    def size(self) -> tuple[int, str]:
        """How many runs the study expands to, and how that multiplies out (no config built)."""
        per_method = {m: self.n_variants(m) for m in self.methods}
        total = len(self.datasets) * sum(per_method.values()) * len(self.seeds)
        variants = " + ".join(f"{n} {m}" for m, n in per_method.items())
        breakdown = (
            f"{len(self.datasets)} dataset(s) x ({variants} variant(s)) x {len(self.seeds)} seed(s)"
        )
        return total, breakdown

    def n_variants(self, method: str) -> int:
        """Variants of ``method`` (grid combinations times listed variants), counted."""
        spec = self.methods[method]
        n = len(spec.get("variants") or {"default": {}})
        for values in (spec.get("grid") or {}).values():
            n *= len(values)
        return n

    def check_size(self, mean_seconds: float | None = None, workers: int = 1) -> int:
        """The run count against ``fedsc.settings.max_study_runs`` (before any config is built).

        Above the limit: :class:`FedscInputError` naming the count and how it multiplies
        out; above a tenth of it: a :class:`~fedsc.resources.ResourceBudgetWarning` with the
        count and the time it takes at ``mean_seconds`` a run.
        """
        from fedsc.resources import check_study_size

        n, breakdown = self.size()
        check_study_size(n, breakdown, f"{self.source} (study {self.name})", mean_seconds, workers)
        return n

    def expand(self, check_size: bool = True) -> list[RunConfig]:
        """Every run of the study, in a fixed order; every config is checked here.

        An invalid run config is an error naming the study file, method and variant,
        raised before any run starts; so is a study above the run limit
        (:meth:`check_size`, counted before any config is built).
        """
        if check_size:
            self.check_size()
        runs = []
        ids: dict[str, str] = {}
        for dataset in self.datasets:
            for method, spec in self.methods.items():
                settings = _merge(self.defaults, spec.get("settings") or {})
                for variant, vset in self.variants(method).items():
                    where = f"{self.source}: methods.{method}.variants.{variant}"
                    for seed in self.seeds:
                        cfg = _merge(settings, vset)
                        cfg.update(
                            method=method,
                            dataset=dataset,
                            seed=seed,
                            study=self.name,
                            variant=variant,
                        )
                        try:
                            run = RunConfig.from_dict(cfg)
                        except FedscInputError as exc:
                            raise FedscInputError(f"{where} (dataset {dataset}): {exc}") from None
                        if run.run_id in ids:  # pragma: no cover - distinct names and seeds
                            raise FedscInputError(f"{where}: duplicates run {ids[run.run_id]}.")
                        ids[run.run_id] = where
                        runs.append(run)
        return runs


def _kind(value: Any) -> str:
    return {list: "list", dict: "mapping", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _mapping(value: Any, key: str, fail: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(key, f"must be a mapping (KEY: VALUE), got a {_kind(value)} {value!r}.")
    return dict(value)


def _refuse_study_set(settings: Mapping[str, Any], key: str, fail: Any) -> None:
    clash = sorted(set(settings) & STUDY_SET)
    if clash:
        raise fail(
            key,
            f"{clash} cannot be set here: the study sets them per run (methods are the keys "
            "of `methods`, datasets and seeds are top-level lists).",
        )


def _name_list(value: Any, key: str, fail: Any, example: str) -> list[str]:
    if isinstance(value, str):
        raise fail(key, f"must be a list, got the string {value!r}; write [{value}].")
    if not isinstance(value, list) or not value:
        raise fail(key, f"must be a non-empty list, e.g. {example}; got {value!r}.")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int) or str(item) == "":
            raise fail(key, f"lists {item!r}; entries are names (strings).")
        out.append(str(item))
    dups = sorted({d for d in out if out.count(d) > 1})
    if dups:
        raise fail(key, f"lists {dups} more than once.")
    return out


def _seed_list(value: Any, fail: Any) -> list[int]:
    example = "e.g. seeds: [42, 123, 456]"
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        raise fail(
            "seeds",
            f"must be a list of integers ({example}), got the {_kind(value)} {value!r}"
            f"; write [{value}]"
            + (" (a string is not split into digits)." if isinstance(value, str) else "."),
        )
    if not isinstance(value, list):
        raise fail("seeds", f"must be a list of integers ({example}), got a {_kind(value)}.")
    if not value:
        raise fail("seeds", f"is empty; list at least one seed ({example}).")
    seeds = []
    for i, seed in enumerate(value):
        try:
            seeds.append(check_seed(seed, f"seeds[{i}]"))
        except FedscInputError as exc:
            raise fail("", str(exc)) from None
    dups = sorted({s for s in seeds if seeds.count(s) > 1})
    if dups:
        raise fail("seeds", f"lists {dups} more than once; each seed would run twice.")
    if len(seeds) > MANY_SEEDS:
        logger.warning("seeds: %d seeds per variant; is that intended?", len(seeds))
    return seeds


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
