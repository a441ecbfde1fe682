"""The attack registry: every attack, what it reads, and :func:`run_attacks` over views.

Every attack is a small function ``(view, truth) -> tidy DataFrame`` with the columns
:data:`COLUMNS` (``chance`` is what the same metric gives for the best guess without the
attack), registered once as an :class:`Attack` record in :data:`ATTACKS` that declares
what it reads: the observers whose views it attacks, the :class:`Truth` fields it is
scored against (``needs``) and the capabilities the attacked method must reveal
(``requires``, matched against :attr:`fedsc.methods.MethodSpec.reveals`). Runs
(:mod:`fedsc.privacy.in_run`), sweeps (:func:`attack_record`) and offline studies all run
attacks from this one registry, so a new attack is one module plus one
:func:`register_attack` line. An attack that finds nothing it needs in a view returns no
rows; ``truth`` is used for scoring only and never reaches the attack's estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from fedsc.privacy.views import OBSERVERS, ObserverView, RunRecord, observer_view
from fedsc.registry import Registry, resolve

if TYPE_CHECKING:
    from fedsc.methods import MethodSpec
    from fedsc.privacy.fedscgen_runs import FedscGenTruth
    from fedsc.privacy.scbatchprox_moments import ClientMoments

__all__ = [
    "ATTACKS",
    "COLUMNS",
    "Attack",
    "Truth",
    "attack_record",
    "attack_row",
    "register_attack",
    "run_attacks",
    "unregister_attack",
]

#: The columns of every attack's rows (one row per target, round and metric).
COLUMNS = ["attack", "observer", "backend", "target_client", "round", "metric", "value", "chance"]


def attack_row(
    view: ObserverView,
    attack: str,
    target: int,
    metric: str,
    value: float,
    chance: float,
    round: int | None = None,
) -> dict[str, Any]:
    """One row of :data:`COLUMNS` for an attack on ``view``."""
    return {
        "attack": attack,
        "observer": view.observer,
        "backend": view.backend,
        "target_client": int(target),
        "round": round,
        "metric": metric,
        "value": float(value),
        "chance": float(chance),
    }


@dataclass(frozen=True)
class Truth:
    """What attacks are scored against (evaluation only); an attack's ``needs`` name fields.

    Attributes
    ----------
    record
        The run's :class:`~fedsc.privacy.views.RunRecord` (every client's contribution).
    moments
        The clients' true embedding moments (scBatchProx; see
        :func:`fedsc.privacy.scbatchprox_moments.client_moments`).
    fedscgen
        FedscGen's clients, cells, labels and splits
        (:class:`fedsc.privacy.fedscgen_runs.FedscGenTruth`), for the FedscGen attacks.
    """

    record: RunRecord | None = None
    moments: ClientMoments | None = None
    fedscgen: FedscGenTruth | None = None


AttackFunction = Callable[[ObserverView, Truth | None], pd.DataFrame]


@dataclass(frozen=True)
class Attack:
    """One registered attack and what it reads.

    Attributes
    ----------
    name
        Registry name (``attacks: [NAME]`` in run configs; ``attack`` in its rows).
    run
        ``run(view, truth) -> rows`` (:data:`COLUMNS`), or ``"module:function"`` (imported
        on first use, so reading the registry does not import torch).
    observers
        The observers (:data:`~fedsc.privacy.views.OBSERVERS`) whose views it attacks;
        other views are not given to it.
    needs
        The :class:`Truth` fields it is scored against (``"record"``, ``"moments"``,
        ``"fedscgen"``); a run builds only the truth its attacks need.
    requires
        The capabilities the attacked method must reveal (``MethodSpec.reveals``); empty:
        any federated method.
    """

    name: str
    run: AttackFunction | str
    observers: tuple[str, ...] = ("coordinator", "client")
    needs: frozenset[str] = frozenset({"record"})
    requires: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.observers) - set(OBSERVERS))
        if unknown:
            raise ValueError(f"attack {self.name!r}: unknown observer(s) {unknown}.")
        fields = set(Truth.__dataclass_fields__)
        if not set(self.needs) <= fields:
            raise ValueError(
                f"attack {self.name!r}: needs {sorted(self.needs)}, but Truth has only "
                f"{sorted(fields)}."
            )
        object.__setattr__(self, "observers", tuple(self.observers))
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "requires", frozenset(self.requires))

    def __call__(self, view: ObserverView, truth: Truth | None) -> pd.DataFrame:
        """Run the attack on ``view``, scored against ``truth``."""
        return resolve(self.run)(view, truth)

    def applies_to(self, spec: MethodSpec) -> bool:
        """Whether the method reveals everything this attack requires."""
        return self.requires <= spec.reveals

    def reads(self, view: ObserverView) -> bool:
        """Whether this attack reads ``view`` (its observer; the method reveals what it needs).

        Views whose ``public`` does not say what the method reveals (hand-built records)
        are read.
        """
        reveals = view.public.get("reveals")
        return view.observer in self.observers and (
            reveals is None or self.requires <= set(reveals)
        )


#: Registered attacks by name (the one registry: runs, sweeps and offline studies).
ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(attack: Attack) -> Attack:
    """Register ``attack``; a name already registered raises :class:`ValueError`."""
    if not isinstance(attack, Attack):
        raise TypeError(f"register_attack() takes an Attack, got {type(attack).__name__}.")
    return ATTACKS.register(attack.name, attack)


def unregister_attack(name: str) -> Attack:
    """Remove the attack ``name`` from the registry and return it."""
    return ATTACKS.unregister(name)


_FEDSCGEN = frozenset({"fedscgen"})
for _attack in (
    Attack(
        "scbatchprox_rows",
        "fedsc.privacy.scbatchprox_rows:attack",
        requires=frozenset({"film_rows"}),
    ),
    Attack(
        "scbatchprox_moments",
        "fedsc.privacy.scbatchprox_moments:attack",
        needs=frozenset({"moments"}),
        requires=frozenset({"film_rows"}),
    ),
    Attack(
        "scbatchprox_weights",
        "fedsc.privacy.scbatchprox_weights:attack",
        observers=("coordinator",),
        requires=frozenset({"film_rows"}),
    ),
    Attack(
        "party_shares",
        "fedsc.privacy.party_shares:attack",
        observers=("party", "colluding_parties"),
    ),
    Attack("update_recovery", "fedsc.privacy.update_recovery:update_recovery"),
    Attack(
        "fedscgen_membership",
        "fedsc.privacy.membership:fedscgen_membership",
        needs=_FEDSCGEN,
        requires=frozenset({"vae_state"}),
    ),
    Attack(
        "fedscgen_property",
        "fedsc.privacy.property_inference:fedscgen_property",
        needs=_FEDSCGEN,
        requires=frozenset({"vae_state", "correction_values"}),
    ),
    Attack(
        "fedscgen_revealed_values",
        "fedsc.privacy.revealed_values:fedscgen_revealed_values",
        needs=_FEDSCGEN,
        requires=frozenset({"vae_state", "correction_values"}),
    ),
):
    register_attack(_attack)


def run_attacks(
    views: ObserverView | Mapping[str, ObserverView] | Iterable[ObserverView],
    truth: Truth | None = None,
    attacks: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Run attacks on one or more observer views; concatenate their tidy rows.

    Parameters
    ----------
    views
        One view, a mapping name -> view (e.g. :func:`fedsc.privacy.views.all_views`), or
        an iterable of views. Each attack gets the views it reads (:meth:`Attack.reads`).
    truth
        What to score against (:class:`Truth`); without it attacks report only what needs
        no truth.
    attacks
        Names from :data:`ATTACKS` (default: all).

    Returns
    -------
    One tidy DataFrame (:data:`COLUMNS`).
    """
    if isinstance(views, ObserverView):
        views = [views]
    elif isinstance(views, Mapping):
        views = list(views.values())
    names = ATTACKS.names() if attacks is None else list(attacks)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}.")
    chosen = [ATTACKS[n] for n in names]
    frames = [a(v, truth) for v in views for a in chosen if a.reads(v)]
    frames = [f.astype({"value": float, "chance": float}) for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def attack_record(
    record: RunRecord,
    truth: Truth | None = None,
    *,
    observers: Iterable[str] = OBSERVERS,
    attacks: Iterable[str] | None = None,
    **view_options: Any,
) -> pd.DataFrame:
    """Run attacks on the views of several observers of one recorded run (for sweeps).

    Parameters
    ----------
    record
        The run's :class:`~fedsc.privacy.views.RunRecord`.
    truth
        What to score against; by default the record itself (no moments).
    observers
        Observers whose views are attacked (default: all of :data:`OBSERVERS`).
    attacks
        Attack names (default: all).
    **view_options
        Options of :func:`~fedsc.privacy.views.observer_view` (``party``, ``parties``,
        ``client``, ``public_weights``).
    """
    truth = truth if truth is not None else Truth(record)
    views = [observer_view(record, name, **view_options) for name in observers]
    return run_attacks(views, truth, attacks)
