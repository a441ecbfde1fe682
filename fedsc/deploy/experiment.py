"""Deployed runs as experiments: the same rows, ledger and ``run.json`` as simulated runs.

Two ways in:

* ``RunConfig(deploy="secagg+")`` (``fedsc run --deploy``, or ``deploy:`` in a study's
  variant): :func:`deploy_run` prepares the input as the in-process run does, writes one
  h5ad per batch, starts a :class:`~fedsc.deploy.local.LocalDeployment` (a SuperLink, one
  SuperNode and worker per site, the CrypTen parties for ``crypten``) and submits the run.
  The runner then evaluates it like any other, so deployed runs enter sweeps, ``compare``
  and ``report``.
* A real deployment (``fedsc deploy evaluate``): :func:`evaluate_deployment` reads the
  coordinator's folder and the sites' output files and writes the run folder.

Both gather the sites' outputs into one AnnData for the metric panels. Whoever does that
holds every site's corrected cells: in a consortium, the evaluator the sites agree to send
their outputs to (docs/deployment.md, "Evaluating a deployment"). The coordinator never
does it: it ends with the model and the ledger.

The preparation (HVG selection, the upstream PCA) runs here, on the pooled cells, as an
agreed shared preprocessing stands in for it in a consortium
(``fedsc/data/federated_preprocessing.py`` computes the same HVGs and PCA from secure sums).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np

from fedsc.data.validate import validate_adata
from fedsc.deploy.drivers import check_transport, driver_module
from fedsc.deploy.site import OUTPUT_UNS, output_digest
from fedsc.errors import FedscInputError
from fedsc.methods import get_method
from fedsc.privacy import in_run
from fedsc.run.config import RunConfig
from fedsc.run.evaluate import evaluate_run
from fedsc.run.outcome import MethodOutcome, Prepared, RunResult
from fedsc.run.prepare import INPUT_PREPARATION, run_inputs
from fedsc.run_privacy import smpc_mechanism

if TYPE_CHECKING:
    from fedsc.methods import MethodSpec
    from fedsc.privacy.in_run import InRunPrivacy

#: How long one deployed run may take before it is stopped (Flower's ``StopRun``; seconds); each step
#: at the sites has its own timeout (the app's ``timeout``).
RUN_TIMEOUT = 24 * 3600.0


def deploy_run(
    adata: ad.AnnData,
    cfg: RunConfig,
    spec: MethodSpec,
    start: float | None = None,
    privacy: InRunPrivacy | None = None,
) -> MethodOutcome:
    """Run ``cfg`` (``cfg.deploy`` set) as a Flower deployment on 127.0.0.1.

    Parameters
    ----------
    adata
        Every batch's cells (each batch becomes one site holding only its own cells).
    cfg
        The run config; ``cfg.deploy`` names the transport.
    spec
        The method's spec (a method in :data:`fedsc.deploy.drivers.DEPLOYED`).
    start
        ``time.perf_counter()`` when the run started (method seconds count from it).
    privacy
        The run's in-run privacy (:func:`fedsc.privacy.in_run.start`): with DP, its
        resolved settings are the config every site trains under (:func:`site_dp`).

    Returns
    -------
    MethodOutcome
        The prepared cells with the sites' outputs, the coordinator's ledger and privacy
        note, and ``info["deployment"]``: the coordinator's ``run.json``.
    """
    from fedsc.deploy.local import LocalDeployment, split_by_batch  # Flower: start-up time

    start = time.perf_counter() if start is None else start
    transport = check_transport(str(cfg.deploy))  # the runner validated the AnnData
    prepared = INPUT_PREPARATION[spec.input](adata, cfg)
    config = spec.make_config(site_dp(cfg, privacy))
    params = driver_module(spec.name).run_params(
        run_inputs(cfg, None, prepared.use_rep, False), config
    )
    if cfg.mechanisms:  # applied by each site to its own value (deploy.site_mechanisms)
        params["mechanisms"] = [_mechanism_spec(m) for m in cfg.mechanisms]
    agreed = agreed_client_dp(privacy)
    if agreed is not None and getattr(config, "dp", None) is None:
        params["dp"] = agreed  # a method without DP in its config: beside it (scBatchProx)
    run_config = {"method": spec.name, "params": json.dumps(params), "transport": transport}
    with tempfile.TemporaryDirectory(prefix="fedsc-deploy-") as tmp:
        root = Path(tmp)
        files = split_by_batch(prepared.adata, cfg.batch_key, root / "site-files")
        # held-out sites join after the training rounds: the sites accept a training
        # phase over the others (at least two), the parties then agree per phase
        quorum = max(2, len(files) - len(cfg.holdout)) if cfg.holdout else None
        with LocalDeployment(
            files, root / "work", parties=transport == "crypten", quorum=quorum
        ) as dep:
            record = dep.run(run_config, root / "coordinator", timeout=RUN_TIMEOUT)
            outputs = {s: ad.read_h5ad(dep.site_out(s) / f"{s}.h5ad") for s in files}
        ledger = json.loads((root / "coordinator" / "ledger.json").read_text())
    gathered = gather_outputs(prepared.adata, outputs, spec.outputs, cfg.batch_key)
    if record.get("dp"):  # the sites' DP-SGD record, where the run's DP block reads it
        gathered.uns[spec.name] = {"dp": dict(record["dp"])}
    return MethodOutcome(
        replace(prepared, adata=gathered),
        ledger,
        bool(record["private"]),
        str(record["privacy"]),
        time.perf_counter() - start,
        {"deployment": _public_record(record)},
    )


def _mechanism_spec(entry: Any) -> Any:
    """A run config's mechanism entry as JSON smpc takes (``{"name": ..., **options}``)."""
    spec = smpc_mechanism(entry)
    return {"name": spec[0], **spec[1]} if isinstance(spec, tuple) else spec


def site_dp(cfg: RunConfig, privacy: InRunPrivacy | None) -> dict[str, Any]:
    """The method params a deployed run's sites receive: with DP, the resolved settings.

    Cell and donor level: the run layer's method params (``dp`` and ``donor_key``), as a
    simulated run passes them to the method. Client level: the settings with σ resolved
    (calibrated to ``target_epsilon`` by the run layer; each site checks it against the
    target with its own accountant) and ``simulated`` — the sites build the ``gaussian``
    mechanism from them (:mod:`fedsc.deploy.site_mechanisms`), where a simulated run builds it
    into its aggregator.
    """
    if privacy is None or privacy.dp is None:
        return dict(cfg.params)
    params = dict(privacy.method_cfg.params)
    agreed = agreed_client_dp(privacy)
    if agreed is not None and "dp" in params:  # a method with a DP model variant
        params["dp"] = agreed
    return params


def agreed_client_dp(privacy: InRunPrivacy | None) -> dict[str, Any] | None:
    """Client-level DP's agreed settings (σ resolved, ``simulated``); ``None`` otherwise."""
    if privacy is None or privacy.dp is None or privacy.dp.level != "client":
        return None
    keep = ("level", "noise_multiplier", "target_epsilon", "clip", "delta", "accountant")
    agreed = {k: v for k, v in privacy.dp.to_dict().items() if k in keep and v is not None}
    return {**agreed, "simulated": bool(privacy.dp.simulated)}


def execute_deployed(
    adata: ad.AnnData,
    cfg: RunConfig,
    spec: MethodSpec,
    privacy: InRunPrivacy,
    *,
    start: float,
    show_progress: bool | None = None,
) -> MethodOutcome:
    """The runner's ``deployment`` executor (:data:`fedsc.run.execute.EXECUTORS`): :func:`deploy_run`.

    ``privacy`` holds no attacks (``RunConfig`` refuses them with ``deploy``); its DP, if
    any, runs at the sites and is accounted from the coordinator's ledger and the sites'
    records as a simulated run's. The sites report their own progress, so
    ``show_progress`` is not used.
    """
    return deploy_run(adata, cfg, spec, start, privacy)


def evaluate_deployment(
    coordinator: str | Path,
    site_outputs: list[str | Path],
    *,
    dataset: str = "deployment",
    study: str = "adhoc",
    variant: str = "default",
    panels: list[str] | None = None,
) -> RunResult:
    """Evaluate a finished deployment from the coordinator's folder and the sites' outputs.

    Parameters
    ----------
    coordinator
        The ServerApp's ``out-dir`` (``run.json``, ``ledger.json``).
    site_outputs
        Each site's output h5ad (``<site>.h5ad``, written by the site's last step).
    dataset, study, variant, panels
        Labels of the tidy rows, and the panels (default: the method's).

    Returns
    -------
    fedsc.run.outcome.RunResult
        Rows and ``run.json`` content as :func:`fedsc.run.execute.execute_run` returns them.
    """
    folder = Path(coordinator)
    try:
        record = json.loads((folder / "run.json").read_text())
        ledger = json.loads((folder / "ledger.json").read_text())
    except FileNotFoundError as exc:
        raise FedscInputError(
            f"{folder} holds no finished deployment ({Path(exc.filename).name} is missing); "
            "give the ServerApp's out-dir."
        ) from None
    if "error" in record:
        raise FedscInputError(f"the deployment in {folder} failed: {record['error']}")
    params = record["params"]
    method = str(record["method"])
    spec = get_method(method)
    if not site_outputs:
        raise FedscInputError("give every site's output h5ad (at least one).")
    outputs: dict[str, ad.AnnData] = {}
    for path in map(Path, site_outputs):
        if not path.is_file():
            raise FedscInputError(f"site output {path} does not exist.")
        if path.stem in outputs:
            raise FedscInputError(
                f"two site outputs are named {path.name}; give each site's output once."
            )
        outputs[path.stem] = _read_output(path)
    expected = sorted(c["name"] for c in record.get("clients", []))
    if expected and sorted(outputs) != expected:
        raise FedscInputError(
            f"the run's sites are {expected} but the outputs given are {sorted(outputs)}; "
            "give one <site>.h5ad per site (sites that dropped out have none: their cells "
            "cannot be evaluated)."
        )
    batch_key = str(params["batch_key"])
    for site, part in outputs.items():
        check_site_output(part, site, spec, record, batch_key, folder)
    cells = ad.concat(list(outputs.values()), merge="same", uns_merge=None)
    # a run.json written before the rename to scvi-tools' name has "label_key"
    labels_key = str(params.get("labels_key", params.get("label_key", "cell_type")))
    validate_adata(  # cells are matched by name: unique names, and the keys present
        cells, batch_key=str(params["batch_key"]), labels_key=labels_key
    )
    cfg = RunConfig(
        method=method,
        dataset=dataset,
        batch_key=str(params["batch_key"]),
        labels_key=labels_key,
        use_rep=params.get("embedding_key"),
        params=driver_module(method).config_of(params).to_dict(),
        seed=int(params["seed"]),
        holdout=list(params.get("holdout") or []),
        panels=panels,
        study=study,
        variant=variant,
        deploy=str(record["deployment"]["transport"]),
    )
    if spec.input == "embedding":
        rep = str(params["embedding_key"])
        prepared = Prepared(cells, rep, rep.removeprefix("X_").lower(), use_rep=rep)
    else:
        prepared = Prepared(cells, "X", "uncorrected")
    outcome = MethodOutcome(
        prepared,
        ledger,
        bool(record["private"]),
        str(record["privacy"]),
        float(record["seconds"]),
        {"deployment": _public_record(record)},
    )
    return evaluate_run(cfg, spec, outcome, in_run.start(cfg, cells, spec))


def _read_output(path: Path) -> ad.AnnData:
    """A site output file, or an error naming it (not an h5ad, unreadable)."""
    with path.open("rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise FedscInputError(
            f"site output {path} is not an .h5ad (HDF5) file; give the <site>.h5ad each site "
            "wrote to its out-dir."
        )
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata errors on a damaged file
        raise FedscInputError(
            f"site output {path} cannot be read ({type(exc).__name__}: {exc}); give the "
            "<site>.h5ad each site wrote to its out-dir."
        ) from None


def check_site_output(
    part: ad.AnnData,
    site: str,
    spec: MethodSpec,
    record: Mapping[str, Any],
    batch_key: str,
    folder: Path,
) -> None:
    """One site output against the coordinator's record: its outputs, its batch, its run.

    Refuses a file without the method's outputs (the site's input given by mistake), a
    file whose cells are not of batch ``site`` alone, and a file of another deployed run
    or changed afterwards: its ``uns["fedsc_deployment"]`` must name this run's
    ``run_token`` and its :func:`~fedsc.deploy.site.output_digest` must equal the one the
    site reported to the coordinator (``run.json`` ``outputs``).
    """
    name = f"{site}.h5ad"
    missing = [
        k
        for k in spec.outputs
        if (
            k.removeprefix("layers/") not in part.layers
            if k.startswith("layers/")
            else k not in part.obsm
        )
    ]
    if missing:
        raise FedscInputError(
            f"{name} holds no {spec.name} output ({missing} missing): it looks like the "
            "site's input, not the file the deployed run wrote; give <out-dir>/<site>.h5ad "
            "from each site."
        )
    if batch_key in part.obs:
        batches = sorted(part.obs[batch_key].astype(str).unique())
        if batches != [site]:
            raise FedscInputError(
                f"{name} holds cells of batch(es) {batches[:5]} in {batch_key!r}, not of site "
                f"{site!r} alone; give each site's own output, named after its batch."
            )
    token = record.get("run_token")
    if not token:
        raise FedscInputError(
            f"the deployment in {folder} records no run token (run by an older fedsc): its "
            "site outputs cannot be tied to it; rerun the deployment with this fedsc."
        )
    mark = part.uns.get(OUTPUT_UNS)
    if not isinstance(mark, Mapping) or str(mark.get("run_token")) != token:
        other = mark.get("run_token") if isinstance(mark, Mapping) else None
        raise FedscInputError(
            f"{name} was not written by the deployed run in {folder} (its run token is "
            f"{other or 'missing'}, the run's is {token}): it belongs to another deployment; "
            "give the outputs this run wrote."
        )
    receipt = (record.get("outputs") or {}).get(site) or {}
    keys = [str(k) for k in receipt.get("keys") or mark.get("keys") or []]
    want = receipt.get("digest")
    if not want or not keys or output_digest(part, keys) != want:
        raise FedscInputError(
            f"{name} differs from what site {site!r} reported to the coordinator (digest "
            "mismatch): it was changed after the run, or is another run's; give the "
            "unmodified output."
        )


def gather_outputs(
    adata: ad.AnnData,
    outputs: Mapping[str, ad.AnnData],
    keys: tuple[str, ...] | list[str],
    batch_key: str,
) -> ad.AnnData:
    """``adata`` with each site's outputs (``obsm`` keys, ``"layers/NAME"``) in its rows.

    Cells are matched by ``obs_names``; every batch of ``adata`` must have an output that
    holds exactly its cells (a site that dropped out has none: an error naming it).
    """
    batches = adata.obs[batch_key].astype(str).to_numpy()
    missing = sorted(set(batches) - set(outputs))
    if missing:
        raise FedscInputError(
            f"site(s) {missing} wrote no output (dropped out?): their cells cannot be "
            "evaluated; run again, or evaluate without them."
        )
    out = adata.copy()
    filled: dict[str, np.ndarray] = {}
    for site, part in outputs.items():
        rows = out.obs_names.get_indexer(part.obs_names)
        expected = np.flatnonzero(batches == site)
        if (rows < 0).any() or not np.array_equal(np.sort(rows), expected):
            raise FedscInputError(
                f"site {site!r}'s output does not hold exactly its own cells (matched by "
                "obs_names); was the site's file changed after the split?"
            )
        for key in keys:
            values = np.asarray(_read(part, key))
            if key not in filled:
                filled[key] = np.full((out.n_obs, *values.shape[1:]), np.nan, values.dtype)
            filled[key][rows] = values
    for key, values in filled.items():
        if key.startswith("layers/"):
            out.layers[key.removeprefix("layers/")] = values
        else:
            out.obsm[key] = values
    return out


def _read(part: ad.AnnData, key: str) -> Any:
    if key.startswith("layers/"):
        name = key.removeprefix("layers/")
        if name not in part.layers:
            raise FedscInputError(f"a site's output lacks layers[{name!r}].")
        value = part.layers[name]
    else:
        if key not in part.obsm:
            raise FedscInputError(f"a site's output lacks obsm[{key!r}].")
        value = part.obsm[key]
    return value.toarray() if hasattr(value, "toarray") else value


def _public_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The coordinator's record without site-local paths (they name the sites' disks)."""
    public = {k: v for k, v in record.items() if k != "outputs"}
    public["outputs"] = {
        s: {k: o.get(k) for k in ("n_obs", "digest") if k in o}
        for s, o in (record.get("outputs") or {}).items()
    }
    return public
