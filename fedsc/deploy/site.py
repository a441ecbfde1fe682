"""A site: one client's data and the steps the coordinator may ask it to run.

Everything here runs in the site's own process (a Flower ClientApp on the site's
SuperNode). The coordinator sends a step name, JSON parameters and arrays (e.g. the
global state); the site answers with a *value*: a dict of arrays (or one array) that the
deployment's secure transport then handles (returned as is in plaintext, masked by
SecAgg+, or secret-shared to the CrypTen parties). Steps are registered per method
(:func:`register_step`), each one small function calling the method's own code.

State between messages of a run (the trained model, metrics kept for a later request)
lives in the Flower ``Context.state`` the SuperNode keeps for the run: each message runs
in a fresh ClientApp process.

A site does not trust the coordinator with its value: before it contributes to a private
transport (``crypten``, ``secagg+``) its :class:`SiteGuard` checks the request against
what the site knows and the protocol's schedule, and refuses, naming the check, a zero
or foreign weight, a site set other than the agreed one, a step it already served or
one outside the schedule (docs/deployment.md, "Threat model").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsc.deploy.drivers import DEPLOYED, driver_module
from fedsc.deploy.site_mechanisms import noised_at_site
from fedsc.errors import FedscInputError

if TYPE_CHECKING:
    import anndata as ad

#: A step: (site, params, arrays) -> value (one array or a dict of arrays).
Step = Callable[["Site", dict[str, Any], dict[str, np.ndarray]], Any]
#: Registered steps by name ("<method>/<step>").
STEPS: dict[str, Step] = {}
#: Steps whose answer is public (JSON sent in the clear, e.g. cell counts, label sets);
#: every other step's answer is a value for the secure transport.
PUBLIC_STEPS: set[str] = set()


def register_step(name: str, *, public: bool = False) -> Callable[[Step], Step]:
    """Decorator: register a site step under ``name`` (refuses duplicates).

    ``public=True``: the step answers JSON the coordinator may read (declared public in
    docs/deployment.md); otherwise its value only goes through the secure transport.
    """

    def add(fn: Step) -> Step:
        if name in STEPS:
            raise ValueError(f"site step {name!r} is already registered.")
        STEPS[name] = fn
        if public:
            PUBLIC_STEPS.add(name)
        return fn

    return add


#: Transports whose values the coordinator must only ever see aggregated.
PRIVATE_TRANSPORTS = ("crypten", "secagg+")
#: Environment variables: the sites agreed before the run (comma-separated) and the
#: least number of them an operation may list (SecAgg+ dropouts), in the site's
#: environment (its SuperNode and worker).
AGREED_SITES_ENV = "FEDSC_AGREED_SITES"
QUORUM_ENV = "FEDSC_SITE_QUORUM"
_GUARD = "guard"


class RefusedRequest(FedscInputError):
    """A site refuses a coordinator's request; the message names the check."""


def step_phase(step: str) -> str:
    """``"rounds"`` (training updates and their metrics) or ``"after rounds"``.

    Held-out sites join after the rounds (FedscGen's correction), so each phase has its
    own site set.
    """
    return "rounds" if step.endswith("/update") or step == "metrics" else "after rounds"


def step_slot(step: str, params: Mapping[str, Any]) -> str:
    """The protocol slot a request fills: a site contributes to each slot at most once.

    Training rounds are ``<method>/update#round=r``, a round's metrics
    ``metrics/<method>#round=r``, every other step its name (and SecAgg+'s argmax
    encoding). The coordinator names the slot in a CrypTen context (``step``); the site
    computes it itself and compares.
    """
    if step.endswith("/update"):
        return f"{step}#round={int(params['round'])}"
    if step == "metrics":
        return f"metrics/{params['method']}#round={int(params['round'])}"
    encode = params.get("encode")
    return f"{step}#{encode}" if encode else step


@dataclass
class SiteGuard:
    """A site's checks of the coordinator's requests during one run (reset at ``hello``).

    The coordinator is the least trusted role (docs/deployment.md, "Threat model"): it
    chooses weights, site sets and which steps to ask for, and with weights (1, 0), two
    site sets or the same step twice it could isolate one site's value from aggregates.
    Each check refuses one of those, naming it:

    * ``weight``: the site's weight is its own (the training cells its update step
      counted; a round's metrics reuse that round's); zero, negative, non-finite or any
      other requested weight is refused, and every weight a CrypTen context lists must be
      positive (the parties check that all sites sealed under one context, so the sites'
      weights are consistent: the revealed total is their sum);
    * ``agreed sites``: an operation lists this site and only agreed sites (configured,
      else those of the phase's first private operation, :func:`step_phase`), never one
      dropped earlier in the phase, and
      at least ``quorum`` of them (default: all for CrypTen, SecAgg+'s reconstruction
      threshold of 2/3 for SecAgg+, whose dropouts are part of the protocol);
    * ``same step twice``: each slot (:func:`step_slot`) once per run;
    * ``schedule``: training rounds in order from 0 and below the configured rounds;
      a round's metrics after its update; no other step while training is under way;
      a CrypTen context names the slot the site computed.
    """

    me: str = ""
    agreed: list[str] | None = None
    quorum: int | None = None
    first: dict[str, list[str]] = field(default_factory=dict)
    current: dict[str, list[str]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    rounds: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, site: Site) -> SiteGuard:
        """The run's guard, kept in the site's state (so it survives fresh ClientApps)."""
        kept = site.state.get(_GUARD)
        if kept is None:
            return cls.fresh(site)
        return cls(**json.loads(np.asarray(kept["json"], dtype=np.uint8).tobytes().decode()))

    @classmethod
    def fresh(cls, site: Site, me: str = "") -> SiteGuard:
        """A new run's guard, with the site's configured agreement."""
        return cls(me=me, agreed=site.agreed_sites, quorum=site.quorum)

    def save(self, site: Site) -> None:
        """Keep the guard in the site's state."""
        data = json.dumps(asdict(self)).encode()
        site.state[_GUARD] = {"json": np.frombuffer(data, dtype=np.uint8).copy()}

    # ------------------------------------------------------------------ checks
    def before(self, step: str, params: Mapping[str, Any]) -> str:
        """Checks before the step runs; returns its slot."""
        if not self.me:
            self.me = str(params.get("site_name") or "")
        slot = step_slot(step, params)
        if slot in self.done:
            raise RefusedRequest(
                f"check 'same step twice': this site already contributed to {slot!r} in "
                "this run; a second contribution would let the coordinator difference it."
            )
        self._check_schedule(step, params)
        context = _context(params)
        if context is not None and context.get("step") != slot:
            raise RefusedRequest(
                f"check 'schedule': the operation names step {context.get('step')!r} but "
                f"this request is {slot!r}."
            )
        self._check_sites(step, params)
        return slot

    def after(self, step: str, params: Mapping[str, Any], slot: str) -> None:
        """Checks once the step ran (the site's own weight is known); record the slot."""
        self._check_weight(step, params)
        self.done.append(slot)
        if step.endswith("/update"):
            self.rounds[step] = int(params["round"])

    def _check_schedule(self, step: str, params: Mapping[str, Any]) -> None:
        rounds = (params.get("config") or {}).get("rounds")
        if step.endswith("/update"):
            r = int(params["round"])
            want = self.rounds.get(step, -1) + 1
            if r != want or (rounds is not None and r >= int(rounds)):
                limit = f" of {int(rounds)}" if rounds is not None else ""
                raise RefusedRequest(
                    f"check 'schedule': {step} round {r} requested, but this site's next "
                    f"round is {want}{limit}; rounds run once each, in order."
                )
            return
        if step == "metrics":
            if self.rounds.get(f"{params['method']}/update", -1) < int(params["round"]):
                raise RefusedRequest(
                    f"check 'schedule': metrics of round {params['round']} requested before "
                    "this site trained that round."
                )
            return
        started = self.rounds.get(f"{step.split('/', 1)[0]}/update")
        if started is not None and rounds is not None and started + 1 < int(rounds):
            raise RefusedRequest(
                f"check 'schedule': {step} requested while training is under way (round "
                f"{started + 1} of {int(rounds)} done at this site)."
            )

    def _check_sites(self, step: str, params: Mapping[str, Any]) -> None:
        context = _context(params)
        phase = step_phase(step)
        if context is not None and context.get("phase") != phase:
            raise RefusedRequest(
                f"check 'schedule': the operation names phase {context.get('phase')!r}, "
                f"but {step!r} belongs to {phase!r}."
            )
        listed = context["clients"] if context is not None else params.get("sites")
        if listed is None:
            raise RefusedRequest(
                "check 'agreed sites': the request does not list the sites taking part; a "
                "site contributes only to an aggregate over the agreed sites."
            )
        listed = [str(x) for x in listed]
        if self.me not in listed or len(set(listed)) != len(listed):
            raise RefusedRequest(
                f"check 'agreed sites': the operation lists {listed}, which must name this "
                f"site ({self.me!r}) and every site once."
            )
        # nothing agreed beforehand: the phase's first operation fixes the set
        base = self.agreed or self.first.get(phase) or sorted(listed)
        outside = sorted(set(listed) - set(base))
        if outside:
            raise RefusedRequest(
                f"check 'agreed sites': the operation lists {outside}, outside the agreed "
                f"sites {sorted(base)}."
            )
        back = sorted(set(listed) - set(self.current.get(phase, base)))
        if back:
            raise RefusedRequest(
                f"check 'agreed sites': {back} left earlier in this run and cannot return "
                "(two site sets would difference a value)."
            )
        least = max(2, self.quorum or _default_quorum(len(base), params.get("transport")))
        if len(listed) < least:
            raise RefusedRequest(
                f"check 'agreed sites': the operation lists {sorted(listed)}, a subset of the "
                f"agreed sites {sorted(base)}; at least {least} must take part (a subset "
                "differenced with the whole isolates the rest)."
            )
        self.first.setdefault(phase, list(base))
        self.current[phase] = sorted(listed)

    def _check_weight(self, step: str, params: Mapping[str, Any]) -> None:
        requested, weighted = _requested_weight(params)
        listed = (_context(params) or {}).get("weights")
        if listed is not None:
            bad = {k: v for k, v in listed.items() if not (math.isfinite(float(v)) and v > 0)}
            if bad or not listed:
                raise RefusedRequest(
                    f"check 'weight': the operation gives weights {bad or listed}; every "
                    "site's weight must be positive (a zero weight isolates the others)."
                )
            if requested is None or float(listed.get(self.me, math.nan)) != requested:
                raise RefusedRequest(
                    f"check 'weight': the operation lists weight {listed.get(self.me)} for "
                    f"this site but asks it for {requested}: inconsistent weights."
                )
        elif weighted and params.get("transport") == "crypten":
            raise RefusedRequest(
                "check 'weight': a weighted operation must list every site's weight."
            )
        if not weighted:
            if params.get("transport") == "secagg+" and requested != 1:
                raise RefusedRequest(
                    f"check 'weight': a sum asks this site for weight {requested:g}; a sum "
                    "takes every site's value with weight 1."
                )
            return
        own = self._own_weight(step, params)
        if requested is None or not math.isfinite(requested) or requested <= 0:
            raise RefusedRequest(
                f"check 'weight': weight {requested} requested; a weight must be positive "
                "(a zero weight isolates the others)."
            )
        if own is None or requested != own:
            raise RefusedRequest(
                f"check 'weight': weight {requested:g} requested for {step!r}, but this "
                f"site's own weight is {own}; it contributes only with its own weight."
            )

    def check_value(self, params: Mapping[str, Any], value: Any) -> None:
        """SecAgg+'s argmax by sums: only the true maximum, at this site's own position.

        With a maximum below this site's count the coordinator would test sites' counts
        against values of its choice; every site's count is at most the true maximum,
        and a larger announced one matches no site.
        """
        if params.get("encode") != "at_max":
            return
        counts = np.asarray(value, dtype=np.float64)
        announced = np.asarray(params["max"], dtype=np.float64)
        if counts.shape != announced.shape or np.any(counts > announced):
            raise RefusedRequest(
                "check 'argmax maximum': the announced per-column maximum is below this "
                "site's count; the coordinator must announce the histogram's maximum."
            )
        order = [str(x) for x in params.get("order") or []]
        if self.me not in order or int(params["position"]) != order.index(self.me):
            raise RefusedRequest(
                f"check 'argmax maximum': position {params['position']} is not this site's "
                f"place in the argmax's site order {order}."
            )

    def _own_weight(self, step: str, params: Mapping[str, Any]) -> float | None:
        if step.endswith("/update"):
            key = f"{step.rsplit('/', 1)[0]}#{int(params['round'])}"
        elif step == "metrics":
            key = f"{params['method']}#{int(params['round'])}"
        else:
            return None
        return self.weights.get(key)


def _default_quorum(n_sites: int, transport: Any) -> int:
    """All sites (CrypTen tolerates no dropout); SecAgg+: its reconstruction threshold.

    SecAgg+ goes on without sites that drop out while at least 2/3 of them answer
    (``DeployedSecAggPlus``' threshold 0.67); the site set may only shrink, never grow back.
    """
    if transport == "secagg+":  # as Flower rounds its threshold
        return max(2, round(0.67 * n_sites))
    return n_sites


def _context(params: Mapping[str, Any]) -> dict[str, Any] | None:
    text = params.get("context")
    if text is None:
        return None
    try:
        body = json.loads(str(text))
        body["clients"] = [str(c) for c in body["clients"]]
    except (ValueError, KeyError, TypeError) as err:
        raise RefusedRequest(f"check 'agreed sites': malformed operation context ({err}).") from err
    return dict(body)


def _requested_weight(params: Mapping[str, Any]) -> tuple[float | None, bool]:
    """(the weight the coordinator asks for, whether the operation is weighted)."""
    if params.get("transport") == "secagg+":
        return float(params.get("num_examples", 1)), params.get("op") == "weighted_mean"
    if "weight" in params:
        return float(params["weight"]), True
    return None, False


def genes_digest(names: Any) -> str:
    """A short digest of an ordered gene list (sites must agree on it exactly)."""
    joined = "\n".join(str(n) for n in names).encode()
    return hashlib.sha256(joined).hexdigest()[:16]


@dataclass
class Site:
    """One site's data and run state.

    Parameters
    ----------
    data_path
        The site's h5ad file (log-normalised expression for FedscGen).
    name
        The site's name; ``None`` takes the file's only value of the batch column.
    out_dir
        Where the site writes its corrected data (``<out_dir>/<name>.h5ad``).
    state
        Arrays kept between messages of a run (the ClientApp context's state).
    agreed_sites
        The sites agreed before the run (default ``$FEDSC_AGREED_SITES``; None: those of
        the run's first private operation). See :class:`SiteGuard`.
    quorum
        The least number of agreed sites an operation may list (default
        ``$FEDSC_SITE_QUORUM``; None: all of them).
    """

    data_path: Path
    name: str | None = None
    out_dir: Path | None = None
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    agreed_sites: list[str] | None = None
    quorum: int | None = None
    _adata: ad.AnnData | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.agreed_sites is None and os.environ.get(AGREED_SITES_ENV, "").strip():
            text = os.environ[AGREED_SITES_ENV]
            self.agreed_sites = sorted(x.strip() for x in text.split(",") if x.strip())
        if self.quorum is None and os.environ.get(QUORUM_ENV, "").strip():
            self.quorum = int(os.environ[QUORUM_ENV])
        if self.agreed_sites is not None:
            self.agreed_sites = sorted(str(x) for x in self.agreed_sites)
            if self.quorum is not None and not 2 <= self.quorum <= len(self.agreed_sites):
                raise FedscInputError(
                    f"quorum {self.quorum} must lie in 2..{len(self.agreed_sites)} (the agreed "
                    f"sites {self.agreed_sites})."
                )

    @property
    def adata(self) -> ad.AnnData:
        """The site's AnnData (read on first use)."""
        if self._adata is None:
            if not Path(self.data_path).is_file():
                raise FedscInputError(
                    f"site data file {str(self.data_path)!r} does not exist; start the "
                    "SuperNode with --node-config 'data-path=\"/path/to/site.h5ad\"'."
                )
            import anndata as ad

            self._adata = ad.read_h5ad(self.data_path)
        return self._adata

    def site_name(self, batch_key: str) -> str:
        """The site's name: configured, or the file's only batch.

        The file must hold cells, all of one batch (when it has the batch column), named
        or not: a file holding two batches made its site one client with two batches'
        cells, which then dominated every cell type of the correction.
        """
        if self.adata.n_obs == 0:
            raise FedscInputError(
                f"{self.data_path} holds no cells; give the site its batch's h5ad (split the "
                "full data with `fedsc deploy split`)."
            )
        if batch_key not in self.adata.obs:
            if self.name:
                return str(self.name)
            raise FedscInputError(
                f"{self.data_path} has no obs column {batch_key!r}; set batch_key= or name "
                "the site with --node-config 'site=\"NAME\"'."
            )
        batches = sorted(self.adata.obs[batch_key].astype(str).unique())
        if len(batches) != 1:
            raise FedscInputError(
                f"{self.data_path} holds {len(batches)} batches {batches[:5]} in "
                f"{batch_key!r}; a site holds one batch: split the file with `fedsc deploy "
                "split` and give each site its own."
            )
        return str(self.name) if self.name else batches[0]

    def run(self, step: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
        """Run a registered step; a private contribution passes the :class:`SiteGuard` first."""
        if step not in STEPS:
            load_method_steps()
        if step not in STEPS:
            raise FedscInputError(
                f"unknown site step {step!r}; this site knows {sorted(STEPS)} (are the "
                "coordinator and the site on the same fedsc version?)."
            )
        if step == "hello":  # a new run: nothing kept from an earlier one, a fresh guard
            self.state.clear()
            facts = STEPS[step](self, params, arrays)
            SiteGuard.fresh(self, str(facts["site"])).save(self)
            return facts
        if step in PUBLIC_STEPS:
            return STEPS[step](self, params, arrays)
        if params.get("transport") not in PRIVATE_TRANSPORTS:
            # plaintext values the coordinator receives anyway (noised first under
            # client-level DP, as every value this site shares)
            return noised_at_site(
                self.state, step, params, arrays, STEPS[step](self, params, arrays)
            )
        guard = SiteGuard.load(self)
        slot = guard.before(step, params)
        value = noised_at_site(self.state, step, params, arrays, STEPS[step](self, params, arrays))
        guard.check_value(params, value)
        kept = self.state.pop(_WEIGHTS, {})  # the step's own weight
        guard.weights.update({k: float(v) for k, v in kept.items()})
        guard.after(step, params, slot)
        guard.save(self)
        return value


def load_method_steps() -> None:
    """Import every deployable method's module (each registers its site steps).

    The modules are read from :data:`fedsc.deploy.drivers.DEPLOYED` by name, so this module
    names no method (and a new deployable method needs no line here).
    """
    for method in DEPLOYED:
        driver_module(method)


@register_step("hello", public=True)
def hello(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Public facts the coordinator needs: name, cell count, gene digest, label set."""
    adata = site.adata
    labels_key = params.get("labels_key")
    labels: list[str] = []
    if labels_key:
        if labels_key not in adata.obs:
            raise FedscInputError(f"{site.data_path} has no obs column {labels_key!r}.")
        labels = sorted(adata.obs[labels_key].astype(str).unique())
    facts = {
        "site": site.site_name(str(params.get("batch_key", "batch"))),
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "genes": genes_digest(adata.var_names),
        "labels": labels,
    }
    key = params.get("embedding_key")
    if key:
        if key not in adata.obsm:
            raise FedscInputError(
                f"{site.data_path} has no obsm[{key!r}]; project the site's cells with the "
                "agreed upstream model first (docs/deployment.md)."
            )
        facts["n_dims"] = int(np.asarray(adata.obsm[key]).shape[1])
    _check_input(site, params)
    return facts


def _check_input(site: Site, params: dict[str, Any]) -> None:
    """The site's data are what the method reads (counts vs log-normalised vs embedding).

    The same check as ``fedsc run`` and ``fedsc.tl`` (:func:`fedsc.data.input_kind.check_input_kind`),
    done at the site on its own cells: a raw-counts file used to train for minutes.
    """
    from fedsc.data.input_kind import check_input_kind
    from fedsc.data.validate import get_representation

    kind = params.get("input")
    if kind not in ("expression", "counts", "embedding"):
        return
    method = str(params.get("method") or "the method")
    adata = site.adata
    if kind == "embedding":
        key = str(params.get("embedding_key") or "X_pca")
        matrix, where = adata.obsm[key], f"{site.data_path} (obsm[{key!r}])"
    else:
        layer = params.get("layer")
        matrix = get_representation(adata, layer=layer)
        where = f"{site.data_path} ({'X' if layer is None else f'layers[{layer!r}]'})"
    check_input_kind(matrix, kind, where=where, method=method, adata=adata)


_WEIGHTS = "guard/weights"


def keep_metrics(
    site: Site,
    method: str,
    round_index: int,
    metrics: Mapping[str, Any],
    weight: float | None = None,
) -> None:
    """Keep an update's metrics (and its weight) at the site until they are asked for.

    ``weight``: the weight the site's own update step computed (its training cells), the
    only weight its :class:`SiteGuard` lets it contribute that round with.
    """
    site.state[f"{method}/metrics/{int(round_index)}"] = {
        k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()
    }
    if weight is not None:
        site.state.setdefault(_WEIGHTS, {})[f"{method}#{int(round_index)}"] = np.asarray(
            float(weight)
        )


@register_step("metrics")
def metrics(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The kept metrics ``names`` of the site's update of ``round`` for ``method``."""
    key = f"{params['method']}/metrics/{int(params['round'])}"
    if key not in site.state:
        raise FedscInputError(f"no update of round {params['round']} was trained at this site.")
    return {k: site.state[key][k] for k in params["names"]}


#: ``uns`` key of a site output naming the deployed run it belongs to.
OUTPUT_UNS = "fedsc_deployment"


def output_digest(adata: ad.AnnData, keys: list[str]) -> str:
    """SHA-256 of a site output's cell names and its output arrays (``obsm`` keys, ``layers/X``).

    Bits, dtype and shape of each array count, so any change to the corrected values, or
    an output of another run, gives another digest. Outputs are dense (the site writes
    them so); a sparse one is hashed through its dense form.
    """
    h = hashlib.sha256()
    h.update("\n".join(map(str, adata.obs_names)).encode())
    for key in sorted(keys):
        if key.startswith("layers/"):
            value = adata.layers[key.removeprefix("layers/")]
        else:
            value = adata.obsm[key]
        arr = np.ascontiguousarray(value.toarray() if hasattr(value, "toarray") else value)
        h.update(f"\n{key}:{arr.dtype.str}:{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def write_output(
    site: Site,
    batch_key: str,
    out: ad.AnnData,
    *,
    keys: list[str] | None = None,
    run_token: str | None = None,
) -> dict[str, Any]:
    """Write a site's corrected AnnData to ``<out_dir>/<site>.h5ad``; the public receipt.

    With ``keys`` (the outputs written) and ``run_token`` (the deployed run's random id,
    sent with the final step), the file's ``uns["fedsc_deployment"]`` names the run and
    the receipt carries :func:`output_digest`: ``fedsc deploy evaluate`` checks both
    against the coordinator's ``run.json``, so an output of another deployment, or one
    changed afterwards, is refused. The digest reveals nothing about the cells beyond
    what a commitment does (SHA-256 of high-entropy floats).
    """
    name = site.site_name(batch_key)
    out_dir = Path(site.out_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.h5ad"
    receipt: dict[str, Any] = {"path": str(path), "n_obs": int(out.n_obs)}
    if keys is not None:
        digest = output_digest(out, keys)
        out.uns[OUTPUT_UNS] = {
            "run_token": str(run_token or ""),
            "site": name,
            "keys": list(keys),
            "digest": digest,
        }
        receipt.update(digest=digest, keys=list(keys))
    out.write_h5ad(path)
    return receipt


def value_to_arrays(value: Any) -> tuple[dict[str, np.ndarray], bool]:
    """A step's value as named arrays, and whether it was one bare array."""
    if isinstance(value, Mapping):
        return {str(k): _numpy(v) for k, v in value.items()}, False
    return {"value": _numpy(value)}, True


def arrays_to_value(arrays: dict[str, np.ndarray], bare: bool) -> Any:
    """Inverse of :func:`value_to_arrays`."""
    return arrays["value"] if bare else arrays


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
