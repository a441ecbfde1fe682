"""The configuration of one run: dataset, method, variant, backend, seed."""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedsc._deprecation import caller_stacklevel, renamed_arguments
from fedsc.backend import check_backend, check_mechanisms, mechanism_name
from fedsc.data.inclusion import SCENARIOS as INCLUSION_SCENARIOS
from fedsc.errors import FedscInputError
from fedsc.methods import get_method, method_names
from fedsc.resources import check_model_size
from fedsc.run.load import DEFAULT as DEFAULT_DATASET
from fedsc.run_privacy import check_dp_schema, check_privacy_combinations
from smpc.options import CryptenOptions

#: Settings left out of the run id while they hold their default, so adding them did not
#: change the id (and resume) of any earlier run.
_UNHASHED_DEFAULTS: dict[str, Any] = {
    "mechanisms": [],
    "attacks": [],
    "dp": None,
    "donor_key": None,
    "deploy": None,
    "sensitivity": False,
    "upstream_params": {},
}

#: Renamed settings: the old name (still accepted, with a ``FutureWarning``) -> the new one.
#: The run id hashes a renamed setting under its old name, so no earlier run changes id.
RENAMED: dict[str, str] = {"label_key": "labels_key"}

#: Seeds reach scikit-learn's ``random_state`` (``numpy.random.RandomState``), which takes
#: 0..2**32-1; torch and numpy generators accept more, so this is the bound runs need.
SEED_MAX = 2**32 - 1

#: ``panels`` values that mean "evaluate nothing" (``fedsc run --panels ""``).
NO_PANELS = ("", "none")


@dataclass
class RunConfig:
    """Everything that determines one run; its hash is the run id.

    Attributes
    ----------
    method
        A registered method (``fedsc.methods.REGISTRY``: ``"scbatchprox"``, ``"fedscgen"``,
        ``"scgen"``...).
    dataset
        A bundled dataset (:data:`fedsc.run.load.BUNDLED`: ``"pancreas"``, the default,
        ``"cellbench_3cl"``), ``"shared:<file>"`` (in ``../shared/data``) or a path to an
        ``.h5ad`` file.
    batch_key, labels_key
        ``obs`` columns with each cell's batch (client) and cell type (``labels_key``:
        scvi-tools' name; ``label_key``, the old one, is accepted with a ``FutureWarning``
        and is the name the run id hashes, so ids did not change).
    donor_key
        ``obs`` column naming each cell's donor (a person), separate from the batch:
        donor-level DP (``dp: {level: donor}``) protects every cell of one donor, and
        ``dp: {level: client, clients: donor}`` makes each donor a client. ``None``: no
        donors.
    use_rep
        Embedding methods: the input embedding (``obsm`` key or ``"X"``). ``None``:
        compute ``upstream`` from the counts.
    upstream, n_comps, n_top_genes
        Upstream embedding computed when ``use_rep`` is None (a name in
        ``fedsc.upstream.EMBEDDING_METHODS``: PCA/ICA/FA, scVI/LDVAE/scANVI), its dims
        (the latent size of the scvi-tools models; 0, the default: the upstream's own, 40
        for PCA/ICA/FA as in the paper, scvi-tools' 10 for the deep ones), and the HVGs.
    upstream_params
        Options of the upstream (its spec's ``params``, e.g. ``{max_epochs: 50}`` for
        scVI); empty: the library's defaults.
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
    deploy
        ``None``: the federation runs in this process (simulation). A transport name
        (``"plaintext"``, ``"secagg+"``, ``"crypten"``): the run is a Flower deployment on
        127.0.0.1, one SuperNode per batch holding only its own cells
        (:mod:`fedsc.deploy.experiment`); evaluated and recorded like a simulated run.
    """

    method: str
    dataset: str = DEFAULT_DATASET
    batch_key: str = "batch"
    labels_key: str = "cell_type"
    donor_key: str | None = None
    use_rep: str | None = None
    upstream: str = "pca"
    upstream_params: dict[str, Any] = field(default_factory=dict)
    #: 0: the upstream's default (``UpstreamSpec.dims``: 40 for PCA/ICA/FA, 10 for scVI...)
    n_comps: int = 0
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
    deploy: str | None = None
    #: also measure each discontinuous metric's jump under a 1e-6 perturbation of the
    #: embedding (``<metric>_perturbation_delta`` rows; about doubles the evaluation)
    sensitivity: bool = False

    def __post_init__(self) -> None:
        from fedsc.evaluation.panels import check_panels
        from fedsc.upstream import EMBEDDING_METHODS, check_upstream_params

        for name in ("method", "dataset", "batch_key", "labels_key", "upstream", "backend"):
            _check_text(name, getattr(self, name))
        _check_text("inclusion", self.inclusion)
        if not isinstance(self.sensitivity, bool):
            raise FedscInputError(f"sensitivity must be true or false, got {self.sensitivity!r}.")
        _check_text("study", self.study)
        _check_text("variant", self.variant)
        if self.use_rep is not None:
            _check_text("use_rep", self.use_rep, "an obsm key (e.g. X_pca) or 'X'")
        if self.donor_key is not None:
            _check_text("donor_key", self.donor_key, "an obs column naming each cell's donor")
        self.seed = check_seed(self.seed)
        if self.n_comps == 0 and not isinstance(self.n_comps, bool):  # the upstream's own
            up = self.upstream
            self.n_comps = EMBEDDING_METHODS.get(up).dims if up in EMBEDDING_METHODS else 40
        self.n_comps = _check_count("n_comps", self.n_comps)
        self.n_top_genes = _check_count("n_top_genes", self.n_top_genes)
        spec = get_method(self.method)
        panels = spec.panels if self.panels is None else self.panels
        panels = [panels] if isinstance(panels, str) else panels
        if not isinstance(panels, list | tuple) or not all(isinstance(p, str) for p in panels):
            raise FedscInputError(
                f"panels must be a list of panel names (e.g. [scib]), got {panels!r}."
            )
        panels = [p.strip() for p in panels]
        if all(p.lower() in NO_PANELS for p in panels):  # [], [""], ["none"]: no evaluation
            self.panels = []
        else:
            self.panels = check_panels([p for p in panels if p.lower() not in NO_PANELS])
            if len(set(self.panels)) != len(self.panels):
                raise FedscInputError(f"panels {self.panels} lists a panel twice.")
        check_backend(self.backend)
        self.backend_options = check_backend_options(self.backend, self.backend_options)
        if not spec.federated and self.backend != "plaintext":
            raise FedscInputError(
                f"{self.method} is centralized and uses no aggregation backend; set "
                "backend: plaintext."
            )
        if isinstance(self.mechanisms, str | Mapping):
            self.mechanisms = [self.mechanisms]
        if self.mechanisms is None:
            self.mechanisms = []
        if not isinstance(self.mechanisms, list | tuple):
            raise FedscInputError(
                f"mechanisms must be a list (e.g. [{{clip: {{max_norm: 1.0}}}}]), got "
                f"{self.mechanisms!r}."
            )
        if self.mechanisms and not spec.federated:
            raise FedscInputError(f"{self.method} is centralized; it takes no mechanisms.")
        _refuse_unaccounted_noise(self.mechanisms)
        self.mechanisms = check_mechanisms(self.mechanisms)
        if self.use_rep is None or self.scenario is not None:
            EMBEDDING_METHODS.get(self.upstream)
            self.upstream_params = check_upstream_params(self.upstream, self.upstream_params)
        elif self.upstream_params:
            raise FedscInputError(
                f"upstream_params {self.upstream_params!r} apply to an upstream computed by the "
                f"run, but use_rep={self.use_rep!r} is given; drop one of them."
            )
        if not isinstance(self.params, Mapping):
            raise FedscInputError(
                f"params must be a mapping of method options (e.g. {{mu: 0.0}}), got "
                f"{self.params!r}."
            )
        self.params = dict(self.params)
        self._one_dp_path()
        _check_param_types(spec, self.params)
        spec.make_config(self.params)  # unknown or invalid params fail here, not mid-sweep
        if _no_attacks(self.attacks) and self.dp is None:
            self.attacks = []  # the attack registry imports torch: not for a run without any
        else:
            from fedsc.privacy.in_run import check_run_privacy

            self.attacks, self.dp = check_run_privacy(self.attacks, self.dp, spec)
        self.holdout = _batch_list("holdout", self.holdout)
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
        if self.stages is not None:
            self.stages = _check_stages(self.stages)
        check_privacy_combinations(self)
        check_model_size(self, spec)
        if self.deploy is not None:
            self._check_deploy(spec)

    def _one_dp_path(self) -> None:
        """DP has one path: ``dp:``. ``params: {dp: ...}`` (e.g. ``--param dp=...``) moves there.

        A method's ``params["dp"]`` alone used to switch the model to its DP variant with no
        noise mechanism and no ε recorded (run.json ``dp: null``). Given on its own, it is
        now the run's ``dp`` (validated, noised and accounted like any other); given beside
        ``dp:``, it must agree with it (the runner passes the resolved settings on this way).
        """
        self.dp = check_dp_schema(self.dp)
        inner = self.params.get("dp")
        if inner is None:
            self.params.pop("dp", None)
            return
        if not isinstance(inner, Mapping):
            raise FedscInputError(
                f"params.dp must be a mapping like {{level: client, target_epsilon: 4}}, got "
                f"{inner!r}; better, set DP with the run config's own `dp:`."
            )
        inner = self.params["dp"] = check_dp_schema(inner)
        assert inner is not None
        if self.dp is None:
            self.dp = dict(self.params.pop("dp"))
            return
        from fedsc.privacy.accounting import DPConfig

        fields = DPConfig.__dataclass_fields__
        outer = {k: dict(self.dp).get(k, fields[k].default) for k in ("level", "clip", "delta")}
        clash = {k: (inner[k], outer[k]) for k in outer if k in inner and inner[k] != outer[k]}
        if clash:
            raise FedscInputError(
                f"DP is given twice with different settings (params.dp vs dp: {clash}); set it "
                "once, with the run config's `dp:` mapping."
            )

    def _check_deploy(self, spec: Any) -> None:
        """A deployed run: a deployable method and nothing the deployment cannot do yet."""
        from fedsc.deploy.drivers import check_deployable, check_deployed_method, check_transport

        _check_text("deploy", self.deploy, "a transport: plaintext, secagg+ or crypten")
        check_transport(str(self.deploy))
        check_deployed_method(self.method)
        config = spec.make_config(self.params)
        dp = dict(self.dp or {})
        refused = {
            "backend": self.backend != "plaintext" or bool(self.backend_options),
            # DP runs at the sites (docs/deployment.md): client level for every method,
            # cell and donor level for a method whose config has DP-SGD
            "dp": bool(dp)
            and dp.get("level", "client") != "client"
            and "dp" not in getattr(type(config), "__dataclass_fields__", {}),
            "dp.clients: donor": dp.get("clients", "batch") != "batch",
            "attacks": bool(self.attacks),
            "scenario": self.scenario is not None,
            "inclusion": self.inclusion != "all",
        }
        bad = [k for k, v in refused.items() if v]
        if bad:
            raise FedscInputError(
                f"deploy: {self.deploy} cannot be combined with {bad} yet: a deployment's "
                "transport replaces the backend (deploy: crypten, not backend: crypten); "
                "its sites are the batches (not one per donor); in-run attacks, scenarios "
                "and inclusion run in simulation only, and so does cell- or donor-level DP "
                "for a method without DP-SGD; drop them or drop deploy."
            )
        check_deployable(self.method, config, str(self.deploy))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """A run config from plain data (a study's merged settings, a stored record)."""
        if not isinstance(data, Mapping):
            raise FedscInputError(
                f"a run config must be a mapping of settings, got {type(data).__name__}."
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - set(RENAMED))
        if unknown:
            raise FedscInputError(
                f"unknown run setting(s) {unknown}; valid settings: {sorted(names)}."
            )
        both = [f"{old}/{new}" for old, new in RENAMED.items() if old in data and new in data]
        if both:
            raise FedscInputError(
                f"{both[0]} given both: set {both[0].split('/')[1]} only (the other is its "
                "deprecated spelling)."
            )
        return cls(**data)  # an old name warns (FutureWarning) and fills the new one

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as plain data (YAML/JSON)."""
        return asdict(self)

    @property
    def label_key(self) -> str:
        """Deprecated spelling of :attr:`labels_key` (``FutureWarning``)."""
        warnings.warn(
            "RunConfig.label_key is deprecated; use labels_key.",
            FutureWarning,
            stacklevel=caller_stacklevel(),
        )
        return self.labels_key

    @property
    def run_id(self) -> str:
        """Stable hash of the full config (same config -> same id, across machines).

        Settings renamed since (:data:`RENAMED`) are hashed under their old name.
        """
        hashed_as = {new: old for old, new in RENAMED.items()}
        data = {
            hashed_as.get(k, k): v
            for k, v in self.to_dict().items()
            if not (k in _UNHASHED_DEFAULTS and v == _UNHASHED_DEFAULTS[k])
        }
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: ``RunConfig(label_key=...)`` still works, with a FutureWarning naming ``labels_key``.
RunConfig.__init__ = renamed_arguments(**RENAMED)(RunConfig.__init__)  # type: ignore[method-assign]


def _refuse_unaccounted_noise(mechanisms: list[Any]) -> None:
    """DP noise comes with its pipeline and its accounting (``dp:``), never on its own.

    ``mechanisms: [gaussian]`` added noise that no ε described (``dp_epsilon`` NaN) and kept
    batch norm, whose statistics leak past the noise.
    """
    if not mechanisms:  # smpc.mechanisms imports torch: not for a config without any
        return
    from smpc.mechanisms.gaussian import GaussianDP

    if any(mechanism_name(m) == GaussianDP.name for m in mechanisms):
        raise FedscInputError(
            f"mechanisms: [{GaussianDP.name}] adds DP noise without its accounting (the run "
            "would report no epsilon) or the DP model changes; use dp: {level: client, "
            "target_epsilon: 4, clip: 1.0, delta: 0.01} instead."
        )


def _no_attacks(attacks: Any) -> bool:
    """``attacks`` lists none (``None`` or an empty list): nothing to check."""
    return attacks is None or (isinstance(attacks, list | tuple) and not attacks)


def check_seed(seed: Any, where: str = "seed") -> int:
    """``seed`` as an int in ``0..SEED_MAX``; bools, floats and strings are refused.

    A float seed was truncated (``1.5`` ran as 1) and a string was split into digits
    (``"42"`` ran seeds 4 and 2), so both are errors naming the fix.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        hint = ""
        if isinstance(seed, float) and seed.is_integer():
            hint = f"; write {int(seed)}"
        elif isinstance(seed, str) and seed.strip().isdigit():
            hint = f"; write {int(seed)} without quotes"
        raise FedscInputError(
            f"{where} must be an integer in 0..{SEED_MAX}, got {seed!r} "
            f"({type(seed).__name__}){hint}."
        )
    if not 0 <= seed <= SEED_MAX:
        raise FedscInputError(
            f"{where} must be in 0..{SEED_MAX} (2**32-1, scikit-learn's random_state range), "
            f"got {seed}."
        )
    return int(seed)


def check_backend_options(backend: str, options: Any) -> dict[str, Any]:
    """Backend options checked by name (and simple type) before any data is loaded.

    Names come from the backend's constructor signature; the plaintext backend takes
    none. Values are checked against the type of the option's default (``parties=abc``
    fails here, not after loading the data); the backend checks ranges when it starts.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise FedscInputError(
            f"backend_options must be a mapping (e.g. {{parties: 3}}), got {options!r}."
        )
    options = dict(options)
    if not options:
        return options
    params = _backend_parameters(backend)
    if params is None:
        return options  # a backend registered without a signature: it checks on start
    if not params:
        raise FedscInputError(
            f"the {backend} backend takes no options, got {sorted(options)}; remove "
            "--backend-option/backend_options (options such as parties or mode are for "
            "backend crypten)."
        )
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise FedscInputError(
            f"unknown {backend} backend option(s) {unknown}; valid options: {sorted(params)}."
        )
    for name, value in options.items():
        default = params[name].default
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        kind = type(default)
        ok = (
            isinstance(value, int | float) and not isinstance(value, bool)
            if kind in (int, float)
            else isinstance(value, kind)
        )
        if kind is int and isinstance(value, float) and not value.is_integer():
            ok = False
        if not ok:
            raise FedscInputError(
                f"{backend} backend option {name} expects {kind.__name__} "
                f"(default {default!r}), got {value!r}."
            )
    if backend == "crypten":
        _check_crypten_values(options)
    return options


def _check_crypten_values(options: dict[str, Any]) -> None:
    """Check the crypten options before any data is loaded.

    With :class:`smpc.options.CryptenOptions`, the object the aggregator is built from:
    the rules are written once.
    """
    try:
        CryptenOptions(**options)
    except ValueError as err:
        raise FedscInputError(f"crypten option {err}") from None


def _backend_parameters(backend: str) -> dict[str, inspect.Parameter] | None:
    """The keyword options a registered backend takes (``{}``: none; ``None``: unknown)."""
    if backend == "plaintext":
        return {}
    if backend == "crypten":
        target: Any = CryptenOptions  # the aggregator's options, without importing it
    else:
        import smpc

        target = smpc.BACKENDS[backend]
    params = {
        n: p
        for n, p in inspect.signature(target).parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    variadic = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())
    return None if variadic and not params else params


def _check_param_types(spec: Any, params: dict[str, Any]) -> None:
    """Numbers where the method's config declares ``int``/``float`` (``mu=abc`` is an error).

    ``1e-3`` is a string to PyYAML; a numeric string is read as the number it spells.
    """
    kinds = {f.name: f.type for f in fields(spec.config_class)}
    for key, value in list(params.items()):
        kind = kinds.get(key)
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
        if kind not in ("int", "float"):
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
            else:
                value = int(value) if kind == "int" and value.is_integer() else value
                params[key] = value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind == "int" and isinstance(value, float) and not value.is_integer()):
            raise FedscInputError(
                f"params.{key} ({spec.name}) expects {'an integer' if kind == 'int' else 'a number'}"
                f", got {value!r}."
            )
        if kind == "int" and isinstance(value, float):
            params[key] = int(value)


def _check_text(name: str, value: Any, what: str = "a string") -> None:
    if not isinstance(value, str) or not value:
        raise FedscInputError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).")


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FedscInputError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _batch_list(name: str, value: Any) -> list[str]:
    """Batch names as a list (a single string is one batch, not its characters)."""
    if value is None:
        return []
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple):
        raise FedscInputError(
            f"{name} must be a list of batch names (e.g. [indrop]), got {value!r}."
        )
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int) or str(item) == "":
            raise FedscInputError(f"{name} lists {item!r}; batch names are non-empty strings.")
        out.append(str(item))
    dups = sorted({b for b in out if out.count(b) > 1})
    if dups:
        raise FedscInputError(f"{name} lists batch(es) {dups} more than once.")
    return out


def _check_stages(stages: Any) -> list[list[str]]:
    if not isinstance(stages, list | tuple) or not stages:
        raise FedscInputError(
            f"stages must be a list of batch lists, e.g. [[indrop], [celseq]], got {stages!r}."
        )
    out = [_batch_list(f"stage {i}", s) for i, s in enumerate(stages)]
    flat = [b for s in out for b in s]
    dups = sorted({b for b in flat if flat.count(b) > 1})
    if dups:
        raise FedscInputError(
            f"stages list batch(es) {dups} more than once; each batch arrives in one stage."
        )
    if any(not s for s in out):
        raise FedscInputError(f"stages {out} has an empty stage.")
    return out


def check_holdout_batches(cfg: RunConfig, batches: Any) -> None:
    """Held-out batches against the loaded data's batches (right after loading).

    Holdouts are only names, so they can be checked only once the data is loaded; this
    runs before any preprocessing or training. Attacks need two training clients
    (:func:`fedsc.run_privacy.check_attack_clients`), also known only now.
    """
    from fedsc.run_privacy import check_attack_clients

    if not cfg.holdout:
        check_attack_clients(cfg, [str(b) for b in batches])
        return
    present = sorted({str(b) for b in batches})
    unknown = [h for h in cfg.holdout if h not in present]
    if unknown:
        raise FedscInputError(
            f"holdout {unknown} names no batch of {cfg.batch_key!r} in {cfg.dataset}; "
            f"batches: {present}."
        )
    if len(set(cfg.holdout)) >= len(present):
        raise FedscInputError(
            f"holdout {cfg.holdout} holds out every batch of {cfg.dataset}; at least one "
            "batch must train."
        )
    check_attack_clients(cfg, present)


def _supporting(capability: str) -> list[str]:
    return [n for n in method_names() if getattr(get_method(n), capability)]
