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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
    """

    data_path: Path
    name: str | None = None
    out_dir: Path | None = None
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    _adata: ad.AnnData | None = field(default=None, repr=False)

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
        """Run a registered step."""
        if step not in STEPS:
            load_method_steps()
        if step not in STEPS:
            raise FedscInputError(
                f"unknown site step {step!r}; this site knows {sorted(STEPS)} (are the "
                "coordinator and the site on the same fedsc version?)."
            )
        return STEPS[step](self, params, arrays)


def load_method_steps() -> None:
    """Import the methods' deployment modules (each registers its site steps)."""
    from fedsc.deploy import fedscgen, scbatchprox  # noqa: F401


@register_step("hello", public=True)
def hello(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Public facts the coordinator needs: name, cell count, gene digest, label set."""
    adata = site.adata
    label_key = params.get("label_key")
    labels: list[str] = []
    if label_key:
        if label_key not in adata.obs:
            raise FedscInputError(f"{site.data_path} has no obs column {label_key!r}.")
        labels = sorted(adata.obs[label_key].astype(str).unique())
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


def keep_metrics(site: Site, method: str, round_index: int, metrics: Mapping[str, Any]) -> None:
    """Keep an update's metrics at the site until their weighted mean is asked for."""
    site.state[f"{method}/metrics/{int(round_index)}"] = {
        k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()
    }


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
