"""Attacks and DP accounting inside a run: the one object the runner drives.

:func:`start` reads a run config's ``attacks`` and ``dp`` settings (after the data are
loaded, so the number of protected units n is known), :meth:`InRunPrivacy.aggregator`
yields the run's aggregator (with the ``gaussian`` mechanism for client-level DP and a
recorder when attacks are listed; the plain :func:`fedsc.backend.aggregator_for` path
otherwise, so runs without either are unchanged), and :meth:`InRunPrivacy.annotate`
adds to the run's tidy rows the DP columns (``dp_epsilon``, ``dp_delta``), the
per-observer ``privacy`` label and the derived ``private`` flag, and one attack row per
(attack, observer, metric) (schema: :mod:`fedsc.results`).

DP settings (``RunConfig.dp``): :mod:`fedsc.privacy.run_dp`. Update recovery (any method):
:mod:`fedsc.privacy.update_recovery`.

Labels are derived from every attack's rows, never from the backend's name
(:mod:`fedsc.privacy.verdict`): an observer *leaks* when any attack (membership, property,
revealed values, update or share recovery) beats chance with its per-target interval, and
is *private against this observer* only when every attack is at chance; ``private`` is
False when any observer leaks, True when all are private, NA otherwise. Without attacks
the label says what the ledger shows the coordinator received (clear contributions or
aggregates only) and ``private`` is NA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsc.privacy.accounting import DPConfig, mechanism_seed
from fedsc.privacy.attacks import ATTACKS, COLUMNS, Attack, Truth, run_attacks
from fedsc.privacy.run_dp import (
    audit_run_dp,
    check_run_dp,
    donors_as_clients,
    resolve_run_dp,
    run_dp_info,
)
from fedsc.privacy.threat_model import clear_contributions
from fedsc.privacy.verdict import ObserverVerdict, judge_rows, observer_verdict
from fedsc.privacy.views import (
    OBSERVERS,
    RecordingMechanism,
    RunRecord,
    observer_view,
    recording_aggregator,
)
from fedsc.results import TIDY_COLUMNS
from fedsc.run.load import dataset_label
from fedsc.run_privacy import smpc_mechanism

if TYPE_CHECKING:
    import anndata as ad

    from fedsc.methods import MethodSpec
    from fedsc.run.config import RunConfig
    from smpc import Aggregator

__all__ = [
    "CENTRALIZED",
    "IN_RUN_ATTACKS",
    "NOT_FEDERATED",
    "InRunPrivacy",
    "check_run_privacy",
    "start",
]

#: Label of a centralized method's rows (no federation at all).
CENTRALIZED = "centralized: all cells are pooled in one place"
#: Label of the uncorrected-input rows.
NOT_FEDERATED = "n/a (uncorrected input, not a federated computation)"


#: The attacks a run config may list: the one registry, :data:`fedsc.privacy.ATTACKS`.
IN_RUN_ATTACKS = ATTACKS


def check_run_privacy(
    attacks: Sequence[str], dp: dict[str, Any] | None, spec: MethodSpec
) -> tuple[list[str], dict[str, Any] | None]:
    """Config-time checks of ``RunConfig.attacks`` and ``RunConfig.dp`` (n not known yet).

    Attacks (:func:`fedsc.run_privacy.check_attacks`): a list of registered names, each
    once, on a federated method that reveals what each requires (``MethodSpec.reveals``). DP: every key's type and range
    (:func:`fedsc.run_privacy.check_dp_schema`: ``true`` is not a number, δ in (0, 1),
    ``target_epsilon`` in a range the accountant calibrates), then what depends on the
    method (:func:`fedsc.privacy.run_dp.check_run_dp`: DP on a centralized method,
    cell-level DP without DP-SGD, both levels at once).
    """
    from fedsc.run_privacy import check_attacks, check_dp_schema

    names = check_attacks(attacks, ATTACKS, spec)
    return names, check_run_dp(check_dp_schema(dp), spec)


@dataclass
class InRunPrivacy:
    """The privacy side of one run (see the module docstring).

    Attributes
    ----------
    cfg
        The run config as given (its ``run_id`` labels every row).
    method_cfg
        The config the method runs with (``params["dp"]`` set for FedscGen under DP).
    spec
        The method's spec.
    attacks
        Attack names to run (empty: none, no recorder).
    dp
        The resolved DP settings (σ fixed), or ``None``.
    mechanism
        The ``gaussian`` mechanism spec (client-level DP), or ``None``.
    """

    cfg: RunConfig
    method_cfg: RunConfig
    spec: MethodSpec
    attacks: list[str] = field(default_factory=list)
    dp: DPConfig | None = None
    mechanism: dict[str, Any] | None = None
    public: dict[str, Any] = field(default_factory=dict)
    record: RunRecord | None = None
    _recorder: RecordingMechanism | None = None

    @contextmanager
    def aggregator(self) -> Iterator[Aggregator]:
        """The run's aggregator; the record is collected when the block ends normally."""
        from fedsc.backend import aggregator_for

        cfg = self.cfg
        if not (self.attacks or self.mechanism) or not self.spec.federated:
            with aggregator_for(cfg.backend, cfg.backend_options, cfg.mechanisms) as agg:
                yield agg
            return
        import smpc

        mechs = [smpc_mechanism(m) for m in cfg.mechanisms]
        if self.mechanism is not None:
            mechs.append(self.mechanism)
        opts = dict(cfg.backend_options)
        # DP noise from the run seed could be regenerated from run.json and subtracted:
        # fresh OS entropy (None) unless the DP is explicitly simulated
        seed = mechanism_seed(None if self.dp is None else self.dp.simulated, cfg.seed)
        if self.attacks:
            agg, self._recorder = recording_aggregator(
                cfg.backend, mechanisms=mechs, mechanism_seed=seed, **opts
            )
        else:
            agg = smpc.make_aggregator(cfg.backend, mechanisms=mechs, mechanism_seed=seed, **opts)
        with agg:
            yield agg
            if self._recorder is not None:
                self.record = RunRecord.from_run(agg, self._recorder, public=self.public)

    def annotate(
        self, rows: pd.DataFrame, info: dict[str, Any], adata: ad.AnnData | None = None
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Rows with DP and privacy columns plus attack rows; ``info`` with ``dp``/``attacks``.

        Parameters
        ----------
        rows
            The run's tidy rows (uncorrected input and method output).
        info
            The run's ``run.json`` content (needs ``ledger``).
        adata
            The evaluated AnnData (FedscGen's cell-level ε is in ``uns["fedscgen"]["dp"]``).
        """
        rows = rows.copy()
        info = dict(info)
        ledger = info.get("ledger")
        dp_info = run_dp_info(
            self.dp, ledger, adata, self.spec.name, clients_are_donors=donors_as_clients(self.cfg)
        )
        eps = math.nan if dp_info is None else dp_info["dp_epsilon"]
        eps = math.inf if dp_info is not None and eps is None else eps
        delta = math.nan if dp_info is None else dp_info["dp_delta"]
        raw = self._attack_rows(adata)
        summary = _summarise(raw)
        verdicts = judge_rows(raw)
        by_observer = {
            o: v
            for o in dict.fromkeys(summary["observer"])
            if (v := observer_verdict(str(o), verdicts)) is not None
        }
        label, private = self._label(summary, by_observer, ledger)
        if self.dp is not None and self.dp.simulated:
            label, private = f"simulated DP (seeded noise: not private); {label}", False
            by_observer = {}
        base = rows["method"] != self.cfg.method
        rows["dp_epsilon"] = np.where(base, math.nan, eps).astype(float)
        rows["dp_delta"] = np.where(base, math.nan, delta).astype(float)
        rows["privacy"] = np.where(base, NOT_FEDERATED, label)
        rows["private"] = pd.array([pd.NA if b else private for b in base], dtype="boolean")
        audits = self._audit(dp_info, ledger)
        if audits:
            summary = pd.concat([summary, _audit_rows(audits)], ignore_index=True)
        if len(summary):
            template = (
                rows[~base].iloc[0] if (~base).any() else self._template(info, eps, delta, label)
            )
            extra = pd.DataFrame(
                {
                    "metric": "attack:" + summary["attack"] + ":" + summary["metric"],
                    "value": summary["value"].to_numpy(float),
                    "chance": summary["chance"].to_numpy(float),
                    "observer": summary["observer"].to_numpy(),
                }
            )
            for col in rows.columns:
                if col not in extra.columns:
                    extra[col] = template[col]
            extra["panel"] = "attack"
            extra["embedding"] = ""
            simulated = self.dp is not None and self.dp.simulated
            extra["private"] = pd.array(
                [
                    False if simulated else _observer_private(by_observer.get(str(o)))
                    for o in extra["observer"]
                ],
                dtype="boolean",
            )
            # the epsilon against each attack's own observer (the utility rows carry the
            # strongest observer's)
            by_eps = (dp_info or {}).get("epsilon_by_observer") or {}
            if by_eps:
                extra["dp_epsilon"] = [
                    _observer_epsilon(by_eps, str(o), float(eps)) for o in extra["observer"]
                ]
            parts = [rows, extra[rows.columns]] if len(rows) else [extra[rows.columns]]
            rows = pd.concat(parts, ignore_index=True)
        info["dp"] = dp_info
        info["attacks"] = summary.to_dict(orient="records")
        info["attack_verdicts"] = [asdict(v) for v in verdicts]
        info["observer_verdicts"] = {
            o: {"status": v.status, "label": v.describe(), "n_metrics": v.n_judged}
            for o, v in by_observer.items()
        }
        info["backend_privacy_note"] = info.get("privacy")
        info["privacy"] = label
        info["private"] = None if private is pd.NA else bool(private)
        return rows, info

    # ------------------------------------------------------------------ internals

    def _audit(self, dp_info: dict[str, Any] | None, ledger: Any) -> list[dict[str, Any]]:
        """The run's empirical DP audits, also stored in ``dp_info["audit"]``."""
        if dp_info is None or self.dp is None:
            return []
        config = self.spec.make_config(self.method_cfg.params)
        audits = audit_run_dp(
            self.dp,
            dp_info,
            ledger,
            mechanism=self.mechanism,
            rounds=int(getattr(config, "rounds", 1)),
            seed=self.cfg.seed,
        )
        dp_info["audit"] = audits
        return audits

    def _template(self, info: dict[str, Any], eps: float, delta: float, label: str) -> pd.Series:
        """The run's columns for attack rows when it has no utility rows (``panels: []``)."""
        cfg = self.cfg
        ledger = info.get("ledger") or {}
        totals = ledger.get("totals", {}) if isinstance(ledger, dict) else {}
        n_bytes = sum(totals.get("bytes_to_party", [])) + totals.get("coordinator_bytes", 0)
        return pd.Series(
            {
                "run_id": cfg.run_id,
                "study": cfg.study,
                "dataset": dataset_label(cfg.dataset),
                "method": cfg.method,
                "variant": cfg.variant,
                "backend": cfg.backend,
                "dp_epsilon": eps,
                "dp_delta": delta,
                "seed": cfg.seed,
                "wall_time_s": info.get("wall_time_s", math.nan),
                "ledger_bytes": int(n_bytes) if totals else math.nan,
                "privacy": label,
            }
        ).reindex(TIDY_COLUMNS)

    def _attack_rows(self, adata: ad.AnnData | None = None) -> pd.DataFrame:
        """Every attack's rows (one per target and round), own-client rows dropped.

        Only the attacks that apply to the method (:meth:`Attack.applies_to`: it reveals
        what they require) run, on the views they read, against the truth they need.
        """
        attacks = [ATTACKS[n] for n in self.attacks if ATTACKS[n].applies_to(self.spec)]
        if self.record is None or not attacks:
            return pd.DataFrame(columns=COLUMNS)
        truth = self._truth(attacks, adata)
        views = [observer_view(self.record, name) for name in OBSERVERS]
        frames = [run_attacks(views, truth, [a.name]) for a in attacks]
        raw = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=COLUMNS)])
        if not len(raw):
            return pd.DataFrame(columns=COLUMNS)
        own = (raw["observer"] == "client") & (raw["target_client"] == 0)
        raw = raw[~own & (raw["metric"] != "weights_known")]
        return raw.astype({"value": float, "chance": float}).reset_index(drop=True)

    def _truth(self, attacks: Sequence[Attack], adata: ad.AnnData | None) -> Truth:
        """The truth the attacks need (``Attack.needs``), built from the run's cells.

        ``fedscgen`` (the clients' cells, labels and train/validation splits): rebuilt from
        the evaluated cells by :func:`fedsc.privacy.fedscgen_runs.fedscgen_truth`; not
        for an inclusion scenario other than ``"all"`` or a dataset-evolution scenario
        (their cells are not the run's clients'), whose attacks then give no rows.
        ``moments`` is not built in runs (scBatchProx's moment attack reports its fit).
        """
        cfg = self.cfg
        needs = set().union(*(a.needs for a in attacks))
        fedscgen = None
        if (
            "fedscgen" in needs
            and adata is not None
            and cfg.inclusion == "all"
            and cfg.scenario is None
        ):
            from fedsc.privacy.fedscgen_runs import fedscgen_truth

            # the method's clients: one per batch, or one per donor (dp.clients: donor)
            fedscgen = fedscgen_truth(
                adata,
                batch_key=self.method_cfg.batch_key,
                labels_key=cfg.labels_key,
                config=self.spec.make_config(self.method_cfg.params),
                seed=cfg.seed,
                holdout=self.method_cfg.holdout,
            )
        return Truth(self.record, fedscgen=fedscgen)

    def _label(
        self, summary: pd.DataFrame, by_observer: dict[str, ObserverVerdict], ledger: Any
    ) -> tuple[str, Any]:
        """The run's privacy label and ``private`` flag, from every attack's verdict.

        ``private`` is False when any attack beats chance against any observer, True only
        when every observer's attacks are all at chance, NA otherwise (inconclusive, or
        no attack applies).
        """
        if not self.spec.federated:
            return CENTRALIZED, pd.NA
        if not len(summary):
            if ledger is None:
                return "no attacks run", pd.NA
            n = clear_contributions(ledger)
            seen = (
                f"receives {n} client contributions in the clear"
                if n
                else "receives aggregates only"
            )
            # contributions in the clear are a leak without any attack; otherwise no
            # attack measured anything, so nothing is claimed
            return f"coordinator: {seen} (ledger; no attacks run)", False if n else pd.NA
        if not by_observer:
            return "no attack applies to this run", pd.NA
        order = {o: i for i, o in enumerate(OBSERVERS)}
        ranked = sorted(by_observer.values(), key=lambda v: (order.get(v.observer, 99), v.observer))
        label = "; ".join(v.describe() for v in ranked)
        statuses = {v.status for v in ranked}
        if "leaks" in statuses:
            return label, False
        return label, True if statuses == {"private"} else pd.NA


def _summarise(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack, observer, metric): the median over targets and rounds."""
    cols = ["attack", "observer", "metric", "value", "chance"]
    if not len(raw):
        return pd.DataFrame(columns=cols)
    return (
        raw.groupby(["attack", "observer", "metric"], sort=True)[["value", "chance"]]
        .median()
        .reset_index()[cols]
    )


def _audit_rows(audits: list[dict[str, Any]]) -> pd.DataFrame:
    """Attack rows of the audits: ``dp_audit:audited_epsilon`` beside the audit's claim.

    Observers as the views name them (``output`` -> ``output_reader``; the cell-level audit
    is the coordinator's, which receives the clients' DP-SGD-trained states); no chance level:
    a lower bound on ε is not an attack on this run's data (the verdicts skip it).
    """
    rows = []
    for a in audits:
        observer = "output_reader" if a["observer"] == "output" else str(a["observer"])
        for metric, key in (
            ("audited_epsilon", "audited_epsilon"),
            ("audit_claimed_epsilon", "claimed_epsilon"),
        ):
            value = a[key]
            rows.append(
                {
                    "attack": "dp_audit",
                    "observer": observer,
                    "metric": metric,
                    "value": math.inf if value is None else float(value),
                    "chance": math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["attack", "observer", "metric", "value", "chance"])


def _observer_epsilon(by_observer: dict[str, Any], observer: str, default: float) -> float:
    """ε against an attack's observer; ∞ where run.json says ``None``.

    Views name observers as the ledger does, bar ``output_reader`` (= ``output``) and the
    party suffixes (``party[0]``).
    """
    name = "output" if observer == "output_reader" else observer.split("[", 1)[0]
    if name not in by_observer:
        return default
    eps = by_observer[name]
    return math.inf if eps is None else float(eps)


def _observer_private(verdict: ObserverVerdict | None) -> Any:
    """An attack row's ``private``: its observer's verdict (NA when not judged)."""
    if verdict is None or verdict.private is None:
        return pd.NA
    return verdict.private


def start(cfg: RunConfig, adata: ad.AnnData, spec: MethodSpec) -> InRunPrivacy:
    """The run's privacy settings, checked against the loaded data (n known).

    DP: :func:`fedsc.privacy.run_dp.resolve_run_dp`.
    """
    attacks = list(getattr(cfg, "attacks", None) or [])
    dp, mechanism, method_cfg = resolve_run_dp(cfg, adata, spec)
    public: dict[str, Any] = {
        "method": spec.name,
        "reveals": sorted(spec.reveals),
        "seed": cfg.seed,
    }
    if attacks:
        config = spec.make_config(method_cfg.params)
        public["config"] = (
            asdict(config)
            if is_dataclass(config) and not isinstance(config, type)
            else dict(config)
        )
        public["batches"] = sorted(set(adata.obs[method_cfg.batch_key].astype(str)))
    return InRunPrivacy(cfg, method_cfg, spec, attacks, dp, mechanism, public)
