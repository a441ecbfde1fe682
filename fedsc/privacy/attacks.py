"""Attacks by name: one line per attack, and :func:`run_attacks` over observer views.

Every attack is a small function ``(view, truth) -> tidy DataFrame`` with columns
``attack, observer, backend, target_client, round, metric, value, chance``; ``chance``
is what the same metric gives for the best guess without the attack. An attack that
does not apply to a view (it holds nothing the attack needs) returns no rows. ``truth``
is used for scoring only and never reaches the attack's estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedsc.privacy.party_shares import party_share_leakage
from fedsc.privacy.scbatchprox_moments import ClientMoments, scbatchprox_moment_inference
from fedsc.privacy.scbatchprox_rows import COLUMNS, scbatchprox_row_recovery
from fedsc.privacy.scbatchprox_weights import scbatchprox_weight_inference
from fedsc.privacy.views import OBSERVERS, ObserverView, RunRecord, observer_view


@dataclass(frozen=True)
class Truth:
    """What attacks are scored against (evaluation only).

    Attributes
    ----------
    record
        The run's :class:`~fedsc.privacy.views.RunRecord` (every client's contribution).
    moments
        The clients' true embedding moments (scBatchProx; see
        :func:`fedsc.privacy.scbatchprox_moments.client_moments`).
    fedscgen
        FedscGen's clients, cells, labels and splits
        (:class:`fedsc.privacy.fedscgen_in_run.FedscGenTruth`), for the FedscGen attacks.
    """

    record: RunRecord | None = None
    moments: ClientMoments | None = None
    fedscgen: Any = None


Attack = Callable[[ObserverView, Truth | None], pd.DataFrame]


def _rows(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    return scbatchprox_row_recovery(view, None if truth is None else truth.record)


def _moments(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    if view.public.get("method", "scbatchprox") != "scbatchprox":
        return pd.DataFrame(columns=COLUMNS)
    return scbatchprox_moment_inference(view, None if truth is None else truth.moments)


def _weights(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    return scbatchprox_weight_inference(view, None if truth is None else truth.record)


def _shares(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    return party_share_leakage(view, None if truth is None else truth.record)


#: Attack name -> function ``(view, truth) -> tidy rows``.
ATTACKS: dict[str, Attack] = {
    "scbatchprox_rows": _rows,
    "scbatchprox_moments": _moments,
    "scbatchprox_weights": _weights,
    "party_shares": _shares,
}


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
        an iterable of views.
    truth
        What to score against (:class:`Truth`); without it attacks report only what needs
        no truth.
    attacks
        Names from :data:`ATTACKS` (default: all).

    Returns
    -------
    One tidy DataFrame (columns ``attack, observer, backend, target_client, round,
    metric, value, chance``).
    """
    if isinstance(views, ObserverView):
        views = [views]
    elif isinstance(views, Mapping):
        views = list(views.values())
    names = list(ATTACKS) if attacks is None else list(attacks)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}.")
    frames = [ATTACKS[n](v, truth) for v in views for n in names]
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
