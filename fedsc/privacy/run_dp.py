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
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedsc.errors import FedscInputError
from fedsc.privacy.accounting import (
    LEDGER_OBSERVERS,
    DPConfig,
    client_level_from_ledger,
    dp_record,
)

if TYPE_CHECKING:
    import anndata as ad

    from fedsc.methods import MethodSpec
    from fedsc.run_config import RunConfig

__all__ = ["check_run_dp", "resolve_run_dp", "run_dp_info"]


def check_run_dp(dp: dict[str, Any] | None, spec: MethodSpec) -> dict[str, Any] | None:
    """Config-time checks of ``RunConfig.dp`` (n not known yet); the mapping to keep.

    Refuses σ ≤ 0, clip ≤ 0, δ outside (0, 1), DP on a centralized method, and
    cell-level DP on a method without DP-SGD (only FedscGen has it).
    """
    if dp is None:
        return None
    dp = dict(dp)
    if dp.get("target_epsilon") is not None and "noise_multiplier" not in dp:
        dp["noise_multiplier"] = None  # calibrate sigma to the target
    conf = DPConfig.from_dict(dp)
    if conf is None:  # from_dict(None) only; dp is a mapping here
        return None
    if not spec.federated:
        raise FedscInputError(f"{spec.name} is centralized; it takes no dp settings.")
    if conf.level == "cell" and spec.name != "fedscgen":
        raise FedscInputError(
            f"cell-level DP (DP-SGD) is implemented for fedscgen only, not {spec.name}; "
            "use dp: {level: client, ...} (the gaussian mechanism)."
        )
    return dp


def _training_clients(adata: ad.AnnData, cfg: RunConfig) -> int:
    batches = set(adata.obs[cfg.batch_key].astype(str))
    return len(batches - set(cfg.holdout))


def resolve_run_dp(
    cfg: RunConfig, adata: ad.AnnData, spec: MethodSpec
) -> tuple[DPConfig | None, dict[str, Any] | None, RunConfig]:
    """The run's DP settings with σ fixed, its ``gaussian`` mechanism, its method config.

    Client-level DP: δ < 1/n for the n training clients, σ calibrated to
    ``target_epsilon`` over the method's rounds (one release per round: the metrics are
    suppressed). Cell-level DP: passed to FedscGen (``params["dp"]``), which checks
    δ < 1/n_train per client and calibrates σ (:func:`fedsc.methods.dp_sgd.resolve_for_clients`).
    """
    raw_dp = getattr(cfg, "dp", None)
    if raw_dp is None:
        return None, None, cfg
    dp = DPConfig.from_dict(dict(raw_dp))
    assert dp is not None
    mechanism = None
    params = dict(cfg.params)
    config = spec.make_config(params)
    if dp.level == "client":
        dp.validate_for(_training_clients(adata, cfg))
        dp = dp.resolve(int(config.rounds))
        mechanism = dp.mechanism_spec()
        if spec.name == "fedscgen":  # GroupNorm variant (BatchNorm buffers break)
            params["dp"] = {"level": "client", "clip": dp.clip, "delta": dp.delta}
    else:
        params["dp"] = dict(raw_dp or {})
    return dp, mechanism, replace(cfg, params=params)


def run_dp_info(
    dp: DPConfig | None, ledger: Any, adata: ad.AnnData | None
) -> dict[str, Any] | None:
    """run.json's ``dp`` block of a finished run (``None`` without DP).

    Client level: ε per observer from the ledger. Cell level: the method's DP-SGD record
    (``adata.uns``).
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
        # the column carries the epsilon against the observer who sees the most (a
        # plaintext coordinator sees each client's update with sigma/sqrt(K) noise)
        strongest = max(accounts, key=lambda o: accounts[o].epsilon)
        acct = accounts[strongest]
        steps = sum(acct.releases.values())
        out = dp_record(acct.epsilon, dp, steps=steps, sampling_rate=1.0, mechanism="gaussian")
        out["dp_observer"] = strongest
        out["dp_epsilon_by_observer"] = {
            o: None if math.isinf(a.epsilon) else a.epsilon for o, a in accounts.items()
        }
        out["dp_uncovered"] = acct.uncovered
        return out
    uns = {} if adata is None else dict(adata.uns.get("fedscgen", {}).get("dp", {}))
    if "epsilon" not in uns:
        raise RuntimeError("cell-level DP ran but the method recorded no epsilon.")
    conf = replace(dp, noise_multiplier=float(uns["noise_multiplier"]))
    return dp_record(
        float(uns["epsilon"]),
        conf,
        steps=int(uns["steps"]),
        sampling_rate=float(uns["sampling_rate"]),
        mechanism="dp_sgd (Opacus)",
    )
