"""Differential privacy of one run: settings checked and resolved, ε read off afterwards.

:func:`check_run_dp` checks ``RunConfig.dp`` at config time (n not known yet);
:func:`resolve_run_dp` fixes σ once the data are loaded (the gaussian mechanism for
client-level DP, ``params["dp"]`` for the method's DP-SGD at cell level);
:func:`run_dp_info` builds run.json's ``dp`` block from the ledger or the method's record.

``level: client``
    DP-FedAvg through the ``gaussian`` mechanism (:mod:`smpc.mechanisms.gaussian`):
    n = training clients, σ calibrated to ``target_epsilon`` over the method's rounds if
    not given; ε is read off the ledger afterwards
    (:func:`~fedsc.privacy.accounting.client_level_from_ledger`). FedscGen then trains the
    GroupNorm DP variant of its VAE (BatchNorm buffers break under clipping and noise).
``level: cell``
    DP-SGD in FedscGen's local training (:mod:`fedsc.methods.dp_sgd`); ε is the largest
    over clients.
``level: donor``
    user-level DP-SGD in FedscGen's local training: donors (the run's ``donor_key``)
    Poisson-sampled, each donor's contribution bounded by C (:mod:`fedsc.methods.dp_sgd`);
    ε of one donor, the same at every client.
``level: client, clients: donor``
    DP-FedAvg with one client per donor (the method's clients are keyed by ``donor_key``
    instead of ``batch_key``; evaluation still reads ``batch_key``): the client-level
    guarantee then protects one donor.

One level per run: a run config cannot carry both (their joint cell-level guarantee is
:func:`~fedsc.privacy.accounting.joint_cell_epsilon`, for library use). ε is stated per
observer (docs/dp.md, "Observers"): ``target_epsilon`` calibrates σ for the reader of the
output; run.json says what every other observer faces.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedsc.errors import FedscInputError
from fedsc.privacy.accounting import (
    CELL_RELATION,
    CLIENT_RELATION,
    DONOR_RELATION,
    LEDGER_OBSERVERS,
    OBSERVER_RECEIVES,
    DeltaWarning,
    DPConfig,
    LedgerAccount,
    client_level_from_ledger,
    delta_check,
    dp_record,
    in_dp_sgd_rounds,
    joint_cell_epsilon,
    ledger_entries,
    uncovered_releases,
)

if TYPE_CHECKING:
    import anndata as ad

    from fedsc.methods import MethodSpec
    from fedsc.run.config import RunConfig

__all__ = ["check_run_dp", "resolve_run_dp", "run_dp_info"]


def check_run_dp(dp: dict[str, Any] | None, spec: MethodSpec) -> dict[str, Any] | None:
    """Config-time checks of ``RunConfig.dp`` (n not known yet); the mapping to keep.

    Refuses σ ≤ 0, clip ≤ 0, δ outside (0, 1), DP on a centralized method, cell-level DP
    on a method without DP-SGD (only FedscGen has it), and both levels in one run.
    """
    if dp is None:
        return None
    dp = dict(dp)
    _refuse_combined_levels(dp)
    if dp.get("target_epsilon") is not None and "noise_multiplier" not in dp:
        dp["noise_multiplier"] = None  # calibrate sigma to the target
    conf = DPConfig.from_dict(_dp_fields(dp))
    if conf is None:  # from_dict(None) only; dp is a mapping here
        return None
    if not spec.federated:
        raise FedscInputError(f"{spec.name} is centralized; it takes no dp settings.")
    if conf.level not in spec.dp_levels:
        from fedsc.methods import REGISTRY

        having = sorted(m.name for _, m in REGISTRY.items() if conf.level in m.dp_levels)
        raise FedscInputError(
            f"{conf.level}-level DP (DP-SGD) is implemented for {', '.join(having)} only, "
            f"not {spec.name}; use dp: {{level: client, ...}} (the gaussian mechanism)."
        )
    return dp


def _dp_fields(dp: dict[str, Any]) -> dict[str, Any]:
    """``dp`` without the run-only keys (:data:`fedsc.run_privacy.RUN_ONLY_DP_KEYS`)."""
    from fedsc.run_privacy import RUN_ONLY_DP_KEYS

    return {k: v for k, v in dp.items() if k not in RUN_ONLY_DP_KEYS}


def donors_as_clients(cfg: RunConfig) -> bool:
    """Whether the run's clients are its donors (``dp: {level: client, clients: donor}``)."""
    dp = getattr(cfg, "dp", None) or {}
    return dp.get("clients", "batch") == "donor"


def _refuse_combined_levels(dp: dict[str, Any]) -> None:
    """One DP level per run config: both at once is refused, naming the way that exists.

    A run config holds one :class:`DPConfig` (one noise setting, one δ, one record); both
    levels at once would need two, and the run would report one ε for two guarantees.
    """
    level = dp.get("level", "client")
    both = isinstance(level, list | tuple | set) or (
        isinstance(level, str) and "client" in level and "cell" in level
    )
    if both or {"client", "cell"} & set(dp):
        raise FedscInputError(
            f"dp: one level per run (level: client or level: cell), got {dp!r}. A run config "
            "carries one noise setting and one epsilon; client-level DP (the gaussian "
            "mechanism) plus cell-level DP-SGD is a library combination (FedScGenConfig("
            "dp={level: cell, ...}) trained through an aggregator with a gaussian mechanism) "
            "whose cell-level guarantee fedsc.privacy.accounting.joint_cell_epsilon states; "
            "its client-level one is the gaussian mechanism's alone."
        )


def _training_clients(adata: ad.AnnData, cfg: RunConfig) -> int:
    batches = set(adata.obs[cfg.batch_key].astype(str))
    return len(batches - set(cfg.holdout))


def _donor_column(adata: ad.AnnData, cfg: RunConfig) -> str:
    key = getattr(cfg, "donor_key", None)
    if not key or key not in adata.obs:
        raise FedscInputError(
            f"donor_key {key!r} names no obs column of {cfg.dataset} (columns: "
            f"{list(adata.obs.columns)}); set donor_key to the column naming each cell's donor."
        )
    return str(key)


def _fewest_donors(adata: ad.AnnData, cfg: RunConfig) -> int:
    """The fewest donors of a training client (one per batch)."""
    key = _donor_column(adata, cfg)
    obs = adata.obs[~adata.obs[cfg.batch_key].astype(str).isin([str(h) for h in cfg.holdout])]
    per = obs.groupby(obs[cfg.batch_key].astype(str), observed=True)[key].nunique()
    return int(per.min()) if len(per) else 0


def _fewest_training_cells(adata: ad.AnnData, cfg: RunConfig) -> int:
    counts = adata.obs[cfg.batch_key].astype(str).value_counts()
    counts = counts[~counts.index.isin([str(h) for h in cfg.holdout])]
    return int(counts.min()) if len(counts) else 0


def _warn_delta(note: str | None) -> None:
    if note is not None:
        warnings.warn(f"DP config: {note}", DeltaWarning, stacklevel=3)


def resolve_run_dp(
    cfg: RunConfig, adata: ad.AnnData, spec: MethodSpec
) -> tuple[DPConfig | None, dict[str, Any] | None, RunConfig]:
    """The run's DP settings with σ fixed, its ``gaussian`` mechanism, its method config.

    Client-level DP: δ < 1/n for the n training clients, σ calibrated to
    ``target_epsilon`` over the method's rounds (one release per round: the metrics are
    suppressed). Cell-level DP: passed to FedscGen (``params["dp"]``), which checks
    δ < 1/n_train per client and calibrates σ (:func:`fedsc.methods.dp_sgd.resolve_for_clients`).
    Client-level DP with scBatchProx's ``secure_rows`` is refused (owner-revealed means
    never pass the mechanism). Both warn (:class:`~fedsc.privacy.accounting.DeltaWarning`)
    when δ > 1/(10 n)
    (:func:`~fedsc.privacy.accounting.delta_check`; for cells, n = the fewest cells of a
    training client, an upper bound on its training cells).
    """
    raw_dp = getattr(cfg, "dp", None)
    if raw_dp is None:
        return None, None, cfg
    dp = DPConfig.from_dict(_dp_fields(dict(raw_dp)))
    assert dp is not None
    mechanism = None
    params = dict(cfg.params)
    config = spec.make_config(params)
    method_cfg = cfg
    if donors_as_clients(cfg):
        # one client per donor: the method splits by donor_key; evaluation keeps batch_key
        method_cfg = replace(cfg, batch_key=_donor_column(adata, cfg), holdout=[])
        if cfg.holdout:
            raise FedscInputError(
                "dp.clients: donor trains one client per donor; holdout names batches, "
                "which are then no clients: drop holdout."
            )
    if dp.level == "client":
        if getattr(config, "secure_rows", False):
            raise FedscInputError(
                "client-level DP and secure_rows cannot run together: secure_rows reveals "
                "each client's row of the mean to that client alone, and the gaussian "
                "mechanism rescales and accounts the mean where it is whole, which it never "
                "is there, so no epsilon could be stated; drop secure_rows (the noise then "
                "protects the rows) or drop dp."
            )
        n = _training_clients(adata, method_cfg)
        dp.validate_for(n)
        _warn_delta(delta_check(dp.delta, n, "clients"))
        dp = dp.resolve(int(config.rounds))
        mechanism = dp.mechanism_spec()
        if "dp" in getattr(type(config), "__dataclass_fields__", {}):
            # the method's DP model variant (FedscGen: GroupNorm; BatchNorm buffers break)
            params["dp"] = {"level": "client", "clip": dp.clip, "delta": dp.delta}
    elif dp.level == "donor":
        donors = _fewest_donors(adata, cfg)
        if donors:
            _warn_delta(delta_check(dp.delta, donors, "donors of the smallest client"))
        params["dp"] = _dp_fields(dict(raw_dp or {}))
        params["donor_key"] = _donor_column(adata, cfg)
    else:
        cells = _fewest_training_cells(adata, cfg)
        if cells:
            _warn_delta(delta_check(dp.delta, cells, "cells of the smallest client"))
        params["dp"] = dict(raw_dp or {})
    return dp, mechanism, replace(method_cfg, params=params)


#: Releases outside the ledger that no DP guarantee of a run covers (``dp_uncovered``).
OUTSIDE_LEDGER: dict[str, str] = {
    "preprocessing:pooled": (
        "HVG selection, normalisation and the upstream embedding (PCA) fitted on every "
        "client's cells together before the federation (fedsc.runner; a deployment computes "
        "them from un-noised pooled sums, fedsc.data.federated_preprocessing): the genes and "
        "components are functions of every client's cells"
    ),
    "evaluation:pooled": (
        "the metric values: computed by the evaluator from every client's corrected cells "
        "and labels, un-noised"
    ),
}


def _uncovered_note(key: str) -> str:
    if key in OUTSIDE_LEDGER:
        return OUTSIDE_LEDGER[key]
    if key.endswith(":weights"):
        return (
            "the FedAvg weights (the clients' cell counts): each client's to a non-private "
            "coordinator, their sum otherwise; public under the relation, not protected"
        )
    if ":correction/" in key:
        return "FedscGen's correction step, computed from the cells without noise"
    if key.endswith(":metrics"):
        return "the per-round mean of the clients' losses, revealed without noise"
    return "an aggregate of the clients' data revealed without noise"


def _json_epsilon(eps: float) -> float | None:
    """JSON has no ∞ or NaN: both are ``None`` (the observer block says which)."""
    return None if not math.isfinite(eps) else float(eps)


def _training_clients_in(ledger: Any) -> int:
    """The most clients in one of the ledger's rounds (0 without rounds)."""
    rounds = [e for e in ledger_entries(ledger) if e.get("round") is not None]
    return max((int(e.get("n_clients") or 0) for e in rounds), default=0)


def _observer_block(
    epsilons: dict[str, float], accounts: dict[str, LedgerAccount] | None
) -> dict[str, Any]:
    """``dp_observer``, ``epsilon_by_observer`` (+ its old name) and ``observers``."""
    applicable = {o: e for o, e in epsilons.items() if not math.isnan(e)}
    strongest = max(applicable, key=lambda o: applicable[o])  # ties: the first listed
    by = {o: _json_epsilon(e) for o, e in epsilons.items()}
    detail: dict[str, Any] = {}
    for o, e in epsilons.items():
        acct = None if accounts is None else accounts[o]
        row: dict[str, Any] = {
            "epsilon": _json_epsilon(e),
            "applicable": not math.isnan(e),
            "receives": OBSERVER_RECEIVES[o]
            if not math.isnan(e)
            else "nothing: no computation parties in this run's ledger",
        }
        if math.isinf(e):
            row["why_no_epsilon"] = "values revealed without noise and nothing under DP"
        if acct is not None:
            row["noise_multipliers"] = {f"{s:.6g}": c for s, c in sorted(acct.releases.items())}
            row["views"] = dict(acct.views)
        detail[o] = row
    return {
        "dp_observer": strongest,
        "epsilon_by_observer": by,
        "dp_epsilon_by_observer": dict(by),  # the earlier name, kept for its readers
        "observers": detail,
    }


def _uncovered_block(uncovered: dict[str, int]) -> dict[str, Any]:
    full = {**uncovered, **{k: 1 for k in OUTSIDE_LEDGER}}
    return {"dp_uncovered": full, "dp_uncovered_notes": {k: _uncovered_note(k) for k in full}}


def _method_dp_record(adata: ad.AnnData | None, method: str | None) -> dict[str, Any]:
    """The cell-level DP record a method wrote (``adata.uns[<method>]["dp"]``)."""
    if adata is None:
        return {}
    names = [method] if method else list(adata.uns.keys())
    for name in names:
        entry = adata.uns.get(name)
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("dp"), dict)
            and ("epsilon" in entry["dp"])
        ):
            return dict(entry["dp"])
    return {}


def run_dp_info(
    dp: DPConfig | None,
    ledger: Any,
    adata: ad.AnnData | None,
    method: str | None = None,
    *,
    clients_are_donors: bool = False,
) -> dict[str, Any] | None:
    """run.json's ``dp`` block of a finished run (``None`` without DP).

    Both levels: ``relation`` (the neighbouring relation), ``epsilon_by_observer`` (every
    observer of :data:`~fedsc.privacy.accounting.LEDGER_OBSERVERS`; ``None`` for ∞ or an
    observer that took no part, ``observers`` says which and what it received),
    ``dp_observer`` (the strongest: its ε is ``dp_epsilon``, every tidy row's), and
    ``dp_uncovered`` (what was released outside the guarantee, with ``dp_uncovered_notes``).

    Client level: ε per observer from the ledger
    (:func:`~fedsc.privacy.accounting.client_level_from_ledger`), ``delta_check``
    (:func:`~fedsc.privacy.accounting.delta_check` for the clients that trained). Cell
    level: the method's DP-SGD record (``adata.uns``), the same for every observer (each
    client releases post-processing of its DP-SGD-trained states) unless the ledger also
    shows client-level noise (:func:`~fedsc.privacy.accounting.joint_cell_epsilon`).
    """
    if dp is None:
        return None
    if dp.level == "client":
        accounts = {
            observer: client_level_from_ledger(
                ledger, dp.delta, accountant=dp.accountant, observer=observer
            )
            for observer in LEDGER_OBSERVERS
        }
        epsilons = {o: a.epsilon for o, a in accounts.items()}
        block = _observer_block(epsilons, accounts)
        acct = accounts[block["dp_observer"]]
        steps = sum(acct.releases.values())
        out = dp_record(acct.epsilon, dp, steps=steps, sampling_rate=1.0, mechanism="gaussian")
        out["relation"] = CLIENT_RELATION
        if clients_are_donors:
            out["relation"] = "donor (one client per donor): " + CLIENT_RELATION.removeprefix(
                "client: "
            )
            out["clients"] = "donor"
        out.update(block)
        out.update(_uncovered_block(acct.uncovered))
        n = _training_clients_in(ledger)
        if n:
            out["delta_check"] = delta_check(dp.delta, n, "clients") or (
                f"delta <= 1/(10 n) for the n={n} clients"
            )
        return out
    uns = _method_dp_record(adata, method)
    if "epsilon" not in uns:
        raise RuntimeError(f"{dp.level}-level DP ran but the method recorded no epsilon.")
    sgd = float(uns["epsilon"])
    epsilons = {
        o: joint_cell_epsilon(sgd, ledger, dp.delta, accountant=dp.accountant, observer=o)
        for o in LEDGER_OBSERVERS
    }
    block = _observer_block(epsilons, None)
    conf = replace(dp, noise_multiplier=float(uns["noise_multiplier"]))
    out = dp_record(
        epsilons[block["dp_observer"]],
        conf,
        steps=int(uns["steps"]),
        sampling_rate=float(uns["sampling_rate"]),
        mechanism="dp_sgd (Opacus)",
    )
    default = DONOR_RELATION if dp.level == "donor" else CELL_RELATION
    out["relation"] = str(uns.get("relation") or default)
    out.update(block)
    out.update(_uncovered_block(uncovered_releases(ledger, in_dp_sgd_rounds)))
    return out


#: Canaries of a run's audit: a one-run audit with m canaries certifies at most about
#: log(m / log(1/beta)) (5.3 at m = 1000), enough to catch noise scaled down 10x or a
#: regenerable noise at claims up to ~4 (docs/dp.md#empirical-audit); ~0.5 s each.
AUDIT_CANARIES = 1000


def audit_run_dp(
    dp: DPConfig | None,
    dp_info: dict[str, Any] | None,
    ledger: Any,
    *,
    mechanism: dict[str, Any] | None,
    rounds: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Empirical audits of a DP run's mechanism (:mod:`fedsc.privacy.audit`), as dicts.

    Client level: canary clients through the run's own ``gaussian`` mechanism (its σ, clip
    and options) for the run's rounds, alongside the run's training clients; observers
    ``output`` (every backend) and ``coordinator`` (plaintext, each client's noised row).
    Cell level: canary cells through the real DP-SGD (``local_train``) at the run's σ on
    the audit's own small model and schedule (it certifies the DP-SGD code, clipping,
    sampling and noise, not FedscGen's 800-unit training). Simulated DP: the attacker
    replays the noise from the published run seed. Nothing to audit (σ = 0, no DP): [].
    Each audit states its own claim (the accountant's ε for the audit's releases at
    δ = min(δ, 1e-5): with m canaries among the clients, δ must stay below 1/m).
    """
    from fedsc.privacy.audit import audit_cell_level, audit_client_level, audit_donor_level
    from fedsc.privacy.threat_model import clear_contributions

    if dp is None or dp_info is None:
        return []
    sigma = dp_info.get("dp_noise_multiplier")
    sigma = dp.noise_multiplier if sigma is None else sigma
    if not sigma:
        return []
    out = []
    if dp.level == "client":
        from smpc.mechanisms import make_mechanism

        assert mechanism is not None
        conf = replace(
            dp, noise_multiplier=float(sigma), target_epsilon=None, delta=min(dp.delta, 1e-5)
        )
        n_clients = _training_clients_in(ledger)
        # the coordinator's own view is audited where the ledger shows it received
        # client contributions in the clear
        plaintext = clear_contributions(ledger) > 0
        for observer in ("output", "coordinator") if plaintext else ("output",):
            spec = dict(mechanism)
            if observer == "coordinator" and n_clients:
                # each client's share of the noise as in the run (sigma/sqrt(K) for its K
                # clients), not diluted over the canaries: the audit's claim for this
                # observer is then the run's (at the audit's delta)
                t = spec.get("min_honest")
                spec["min_honest"] = n_clients if t is None else min(int(t), n_clients)
            res = audit_client_level(
                conf,
                rounds=int(rounds),
                n_canaries=AUDIT_CANARIES,
                n_clients=n_clients,
                observer=observer,
                noise_seed=seed if dp.simulated else None,
                mechanism=make_mechanism(spec),
            )
            out.append(res.to_dict())
        return out
    conf = replace(
        dp,
        noise_multiplier=float(sigma),
        target_epsilon=None,
        clip=0.1,  # below the canaries' gradient norms: every canary is as loud as allowed
        delta=min(dp.delta, 1e-5),
    )
    audit = audit_donor_level if dp.level == "donor" else audit_cell_level
    res = audit(conf, n_canaries=AUDIT_CANARIES, seed=seed if dp.simulated else None)
    d = res.to_dict()
    # the audited release is a client's DP-SGD-trained state: what its coordinator receives
    d["observer"] = "coordinator"
    d["scope"] = (
        f"the {dp.level}-level DP-SGD code at the run's sigma"
        + (", q and k" if dp.level == "donor" else "")
        + ", on the audit's own small model"
    )
    out.append(d)
    return out
