"""Execute one run: load -> prepare -> method (federated) -> evaluate -> tidy rows."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

import smpc
from fedsc import datasets, settings
from fedsc.data.access import representation
from fedsc.data.inclusion import apply_inclusion
from fedsc.data.input_kind import check_input_kind, detect_input_kind
from fedsc.data.validate import validate_adata
from fedsc.errors import FedscOutputError
from fedsc.evaluation import evaluate
from fedsc.evaluation.panels import missing_reasons
from fedsc.methods import MethodSpec, RunInputs, get_method
from fedsc.methods.health import movement_note, relative_movement
from fedsc.preprocessing import fit_embedding, preprocess
from fedsc.privacy import in_run
from fedsc.results import TIDY_COLUMNS
from fedsc.run_config import RunConfig, check_holdout_batches

logger = logging.getLogger(__name__)

PACKAGES = ("fedsc", "torch", "crypten", "numpy", "scipy", "scanpy", "anndata", "scib-metrics")


@dataclass
class RunResult:
    """Outcome of one run."""

    config: RunConfig
    adata: ad.AnnData
    rows: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def load_dataset(name: str) -> ad.AnnData:
    """Bundled name, ``shared:<file>`` or a path to an ``.h5ad`` file."""
    bundled = {"pancreas": datasets.pancreas, "cellbench_3cl": datasets.cellbench_3cl}
    if name in bundled:
        return bundled[name]()
    if name.startswith("shared:"):
        return datasets.read(datasets.shared_path(name.removeprefix("shared:")))
    return datasets.read(name)


def dataset_label(name: str) -> str:
    """Short dataset name for tables: file stem for paths."""
    return (
        Path(name.removeprefix("shared:")).stem
        if name not in ("pancreas", "cellbench_3cl")
        else name
    )


def looks_like_counts(x: Any) -> bool:
    """Raw counts: non-negative and above log1p(1e4) (``fedsc.data.input_kind``)."""
    return detect_input_kind(x).kind == "counts"


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run record lists."""
    from fedsc.settings._numerics import library_versions

    return library_versions(PACKAGES)


def prepare_expression(adata: ad.AnnData, cfg: RunConfig) -> ad.AnnData:
    """Log-normalised HVG expression: from counts if X holds counts, else as given.

    ``X`` must be raw counts (normalised, log1p'd and reduced to HVGs here) or
    log-normalised expression (used as given); anything else (counts with negative
    entries, an embedding or scaled data) is refused with a message naming what was found.
    """
    found = check_input_kind(
        adata.X, "expression_or_counts", method=f"method {cfg.method!r}", adata=adata
    )
    if found.kind == "counts":
        return preprocess(adata, n_top_genes=cfg.n_top_genes)
    return adata.copy()


@dataclass(frozen=True)
class Prepared:
    """A method's input: the cells and what the "before" rows evaluate.

    ``before`` (``obsm`` key or ``"X"``) is the uncorrected representation, named ``base``
    in the ``method`` column (e.g. ``"pca"``, ``"uncorrected"``); ``use_rep`` is the
    embedding an embedding method reads (``None`` for the other input kinds).
    """

    adata: ad.AnnData
    before: str
    base: str
    use_rep: str | None = None


def _prepare_embedding(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    """``use_rep`` if given (the method validates it), else the upstream embedding."""
    if cfg.use_rep is not None:
        base = cfg.use_rep.removeprefix("X_").lower()
        return Prepared(adata, cfg.use_rep, base, use_rep=cfg.use_rep)
    expr = prepare_expression(adata, cfg)
    fit_embedding(expr, method=cfg.upstream, n_comps=cfg.n_comps, seed=cfg.seed)
    key = f"X_{cfg.upstream}"
    return Prepared(expr, key, cfg.upstream, use_rep=key)


def _prepare_expression(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    return Prepared(prepare_expression(adata, cfg), "X", "uncorrected")


def _prepare_counts(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    check_input_kind(adata.X, "counts", method=f"method {cfg.method!r}", adata=adata)
    return Prepared(adata.copy(), "X", "uncorrected")


#: How the runner prepares each input kind (``MethodSpec.input``).
INPUT_PREPARATION: dict[str, Callable[[ad.AnnData, RunConfig], Prepared]] = {
    "embedding": _prepare_embedding,
    "expression": _prepare_expression,
    "counts": _prepare_counts,
}


def run_inputs(
    cfg: RunConfig, agg: Any, use_rep: str | None, show_progress: bool | None
) -> RunInputs:
    """The common arguments a method's run function receives, from the run config."""
    return RunInputs(
        batch_key=cfg.batch_key,
        label_key=cfg.label_key,
        aggregator=agg,
        seed=cfg.seed,
        use_rep=use_rep,
        holdout=tuple(cfg.holdout),
        inclusion=cfg.inclusion,
        stages=None if cfg.stages is None else tuple(tuple(s) for s in cfg.stages),
        upstream=cfg.upstream,
        n_comps=cfg.n_comps,
        n_top_genes=cfg.n_top_genes,
        show_progress=show_progress,
    )


def _run_method(
    adata: ad.AnnData, cfg: RunConfig, spec: MethodSpec, agg: Any, show_progress: bool | None
) -> Prepared:
    """Prepare the input, run the method (or its scenario); return what to evaluate."""
    config = spec.make_config(cfg.params)
    agg = agg if spec.federated else None
    if cfg.scenario is not None:
        inputs = run_inputs(cfg, agg, None, show_progress)
        settings.apply_threads()
        work = spec.scenario(cfg.scenario)(adata, inputs, config)
        return Prepared(work, f"X_{cfg.upstream}", cfg.upstream)
    prepared = INPUT_PREPARATION[spec.input](adata, cfg)
    settings.apply_threads()  # preparation may have changed torch's threads (numba's OpenMP)
    spec.fit(prepared.adata, run_inputs(cfg, agg, prepared.use_rep, show_progress), config)
    if cfg.inclusion != "all":  # evaluate the cells and labels the scenario kept
        work = apply_inclusion(
            prepared.adata, batch_key=cfg.batch_key, label_key=cfg.label_key, scenario=cfg.inclusion
        )
        return Prepared(work, prepared.before, prepared.base, prepared.use_rep)
    return prepared


def _check_outputs(adata: ad.AnnData, spec: MethodSpec) -> None:
    def present(rep: str) -> bool:
        if rep.startswith("layers/"):
            return rep.removeprefix("layers/") in adata.layers
        return rep in adata.obsm

    missing = [rep for rep in spec.outputs if not present(rep)]
    if missing:
        raise RuntimeError(
            f"method {spec.name!r} did not write its declared output(s) {missing}; its run "
            "function must write every entry of MethodSpec.outputs into the AnnData."
        )
    for rep in spec.outputs:
        values = representation(adata, rep, "output")
        bad = int((~np.isfinite(values)).any(axis=1).sum()) if values.ndim == 2 else 0
        if bad:
            raise RuntimeError(
                f"method {spec.name!r} wrote non-finite values (NaN/Inf) for {bad} of "
                f"{values.shape[0]} cells into its output {rep!r}: the method failed (e.g. its "
                "training diverged; try a smaller learning rate lr=), this is not a problem of "
                "the input. Nothing was evaluated."
            )


def run_health(
    adata: ad.AnnData,
    before: str,
    after: str | None,
    rows: dict[str, pd.DataFrame],
    method: str,
) -> dict[str, Any]:
    """What the run summary (``run.json`` info) says about the run's health.

    Returns ``movement`` (``||Z' - Z||_F / ||Z||_F`` between the uncorrected ``before`` and
    the corrected ``after`` representation, ``None`` when their shapes differ),
    ``missing_metrics`` (one record per metric that could not be computed: method,
    embedding, panel, metric, reason) and ``warnings`` (also logged): a method that left
    its input practically unchanged, metrics that are missing.

    Parameters
    ----------
    adata
        The evaluated cells.
    before, after
        The uncorrected and the corrected representation (``evaluate``'s ``rep``).
    rows
        ``method`` label -> the rows :func:`fedsc.evaluation.evaluate` returned for it.
    method
        The method's name.
    """
    movement = (
        None
        if after is None
        else relative_movement(
            representation(adata, before, "before"), representation(adata, after, "after")
        )
    )
    warnings_: list[str] = []
    note = movement_note(method, movement)
    if note:
        warnings_.append(note)
    missing = [
        {"method": label, "embedding": str(frame["embedding"].iloc[0]) if len(frame) else "",
         "panel": panel, "metric": metric, "reason": reason}
        for label, frame in rows.items()
        for (panel, metric), reason in missing_reasons(frame).items()
    ]  # fmt: skip
    if missing:
        names = ", ".join(f"{m['method']}/{m['metric']}" for m in missing)
        text = f"{len(missing)} metric(s) could not be computed and are reported missing: {names}"
        logger.warning(text)
        warnings_.append(text)
    return {"movement": movement, "missing_metrics": missing, "warnings": warnings_}


def format_metrics(rows: pd.DataFrame, info: dict[str, Any] | None = None) -> str:
    """The metric table the CLI prints: every metric row, missing values shown as such.

    Unlike a plain ``pivot_table`` (which drops all-NaN rows), a metric that is missing
    stays in the table as ``missing``; the reasons (from ``info["missing_metrics"]``) and
    the run's warnings follow the table.
    """
    methods = list(dict.fromkeys(rows["method"]))
    metrics = list(dict.fromkeys(rows["metric"]))
    table = rows.pivot_table(
        index="metric", columns="method", values="value", sort=False, dropna=False
    ).reindex(index=metrics, columns=methods)
    shown = table.map(lambda v: "missing" if not np.isfinite(v) else f"{v:.4f}")
    lines = [shown.to_string()]
    info = info or {}
    for m in info.get("missing_metrics", []):
        lines.append(f"missing: {m['method']} {m['panel']}/{m['metric']}: {m['reason']}")
    for w in info.get("warnings", []):
        if not w.startswith(f"{len(info.get('missing_metrics', []))} metric(s)"):
            lines.append(f"warning: {w}")
    return "\n".join(lines)


def _evaluate(adata: ad.AnnData, rep: str, cfg: RunConfig, pre: str) -> pd.DataFrame:
    """The run's metric panels on one representation (``pre``: the uncorrected input)."""
    if not cfg.panels:  # panels [] / --panels "": no evaluation, no metric rows
        return pd.DataFrame(columns=TIDY_COLUMNS)
    return evaluate(
        adata,
        rep=rep,
        batch_key=cfg.batch_key,
        label_key=cfg.label_key,
        panels=cfg.panels,
        X_pre_rep=pre,
        seed=cfg.seed,
        sensitivity=cfg.sensitivity,
    )


def _method_rows(cfg: RunConfig, frame: pd.DataFrame, method: str, extra: dict) -> pd.DataFrame:
    frame = frame.copy()
    frame["method"] = method
    for key, value in {
        "run_id": cfg.run_id,
        "study": cfg.study,
        "dataset": dataset_label(cfg.dataset),
        "variant": cfg.variant,
        "seed": cfg.seed,
        **extra,
    }.items():
        frame[key] = value
    return frame.reindex(columns=TIDY_COLUMNS)


@dataclass
class MethodOutcome:
    """What running a method left to evaluate: its cells and its privacy evidence.

    ``info`` holds extra ``run.json`` entries (a deployment's coordinator record).
    """

    prepared: Prepared
    ledger: dict[str, Any]
    private: bool
    privacy_note: str
    method_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def execute_run(
    cfg: RunConfig, *, adata: ad.AnnData | None = None, show_progress: bool | None = None
) -> RunResult:
    """Run one configuration end to end and return its tidy rows.

    Rows cover the uncorrected input (``method`` = the upstream name, e.g. ``"pca"``, or
    ``"uncorrected"``) and the corrected output, so base-vs-method comparisons come from
    the same run. With ``cfg.deploy`` the method runs as a Flower deployment on this
    machine (:mod:`fedsc.deploy.experiment`) and is evaluated the same way.
    """
    spec = get_method(cfg.method)
    if spec.federated and cfg.deploy is None:
        # CrypTen's fork server imports torch and CrypTen while the data loads (idempotent)
        smpc.prestart(cfg.backend, **cfg.backend_options)
    settings.apply()  # threads, passive waiting, compile caches (idempotent)
    start = time.perf_counter()
    adata = load_dataset(cfg.dataset) if adata is None else adata
    validate_adata(adata, batch_key=cfg.batch_key, label_key=cfg.label_key)
    check_holdout_batches(cfg, adata.obs[cfg.batch_key].unique())  # before any training
    privacy = in_run.start(cfg, adata, spec)  # attacks + DP (checked now that n is known)
    if cfg.deploy is not None:  # RunConfig refused attacks and DP with deploy
        from fedsc.deploy.experiment import deploy_run

        return evaluate_run(cfg, spec, deploy_run(adata, cfg, spec, start), privacy)
    with privacy.aggregator() as agg:
        prepared = _run_method(adata, privacy.method_cfg, spec, agg, show_progress)
        outcome = MethodOutcome(
            prepared,
            agg.ledger.to_dict(),
            bool(agg.private),
            agg.privacy_note,
            time.perf_counter() - start,
        )
    return evaluate_run(cfg, spec, outcome, privacy)


def evaluate_run(
    cfg: RunConfig,
    spec: MethodSpec,
    outcome: MethodOutcome,
    privacy: in_run.InRunPrivacy | None = None,
) -> RunResult:
    """Evaluate a method's outcome: tidy rows (before and after) and the run's record."""
    start = time.perf_counter()
    prepared = outcome.prepared
    work, before, after = prepared.adata, prepared.before, spec.evaluated
    _check_outputs(work, spec)
    before_rows = _evaluate(work, before, cfg, pre=before)
    after_rows = _evaluate(work, after, cfg, pre=before)
    wall = outcome.method_seconds + time.perf_counter() - start
    ledger = outcome.ledger
    ledger_bytes = int(
        sum(ledger["totals"]["bytes_to_party"]) + ledger["totals"]["coordinator_bytes"]
    )
    extra = {"wall_time_s": wall, "ledger_bytes": ledger_bytes}
    backend = cfg.backend if cfg.deploy is None else f"deploy:{cfg.deploy}"
    rows = pd.concat(
        [
            _method_rows(
                cfg, before_rows, prepared.base, {"backend": "none", "private": True, **extra}
            ),
            _method_rows(
                cfg,
                after_rows,
                cfg.method,
                {
                    "backend": backend if spec.federated else "none",
                    "private": outcome.private,
                    **extra,
                },
            ),
        ],
        ignore_index=True,
    )
    info: dict[str, Any] = {"threads": settings.resolved_threads()}
    info.update(
        {
            "run_id": cfg.run_id,
            "config": cfg.to_dict(),
            "versions": package_versions(),
            "wall_time_s": wall,
            "method_seconds": outcome.method_seconds,
            "privacy": outcome.privacy_note,
            "private": outcome.private,
            "ledger": ledger,
            "evaluated": {"before": before, "after": after},
            "cpu_count": os.cpu_count(),
            # CPU, kernels chosen, threads, variables: why two runs' bits differ
            "numerics": settings.numerical_environment(),
            **outcome.info,
        }
    )
    info.update(
        run_health(
            work, before, after, {prepared.base: before_rows, cfg.method: after_rows}, cfg.method
        )
    )
    if privacy is not None:
        rows, info = privacy.annotate(rows, info, work)  # DP/privacy columns, attack rows
    return RunResult(cfg, work, rows, info)


#: Files of one run's output folder.
RUN_FILES = ("corrected.h5ad", "metrics.csv", "run.json")


def check_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Check before any computation that a run can be written to ``out_dir``.

    ``out_dir`` must be a folder (or not exist yet) whose parent can be created and
    written; an earlier run there (any of :data:`RUN_FILES`) is refused unless
    ``overwrite``; a folder holding other files is refused (a run replaces its folder).
    Raises :class:`~fedsc.errors.FedscOutputError` naming the problem and the fix.
    """
    out = Path(out_dir)
    if str(out_dir) == "":
        raise FedscOutputError("--out is empty; name a folder for the run's outputs.")
    if out.exists() and not out.is_dir():
        raise FedscOutputError(
            f"--out {out} exists and is not a folder; name a new folder for the run's outputs."
        )
    if out.is_dir():
        contents = sorted(p.name for p in out.iterdir())
        earlier = [n for n in contents if n in RUN_FILES]
        if earlier and not overwrite:
            raise FedscOutputError(
                f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite "
                "to replace it, or choose another folder."
            )
        others = [n for n in contents if n not in RUN_FILES]
        if others:
            raise FedscOutputError(
                f"--out {out} is a folder holding other files ({', '.join(others[:5])}); "
                "a run writes into its own folder: choose a new or empty one."
            )
    parent = _existing_ancestor(out.absolute().parent)
    if not parent.is_dir():
        raise FedscOutputError(
            f"--out {out}: {parent} is a file, not a folder; choose another location."
        )
    try:  # a real probe: os.access says yes to root on read-only or virtual file systems
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".fedsc-probe-{os.getpid()}-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FedscOutputError(
            f"--out {out}: cannot write in {parent} ({exc.strerror or exc}); choose a "
            "writable location."
        ) from None
    return out


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_run(result: RunResult, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``corrected.h5ad``, ``metrics.csv`` and ``run.json`` into ``out_dir``, atomically.

    The files are written into a temporary sibling folder (``.<name>.tmp-<pid>``),
    fsynced, then renamed to ``out_dir``, so a crash never leaves half a run. An earlier
    run in ``out_dir`` is refused unless ``overwrite``; then it is replaced only after the
    new run is complete (and removed once the new one is in place).
    """
    out = check_output_dir(out_dir, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover (same pid) only
    try:
        tmp.mkdir()
        result.adata.write_h5ad(tmp / "corrected.h5ad")
        result.rows.to_csv(tmp / "metrics.csv", index=False)
        (tmp / "run.json").write_text(json.dumps(result.info, indent=2, default=_json_default))
        for name in RUN_FILES:
            _fsync(tmp / name)
        _fsync(tmp)
        if out.exists():
            out.rename(old)  # the earlier run stays whole until the new one is complete
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        _fsync(out.parent)
    except OSError as exc:
        raise FedscOutputError(f"could not write the run to {out}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
