"""What computation parties learn from their shares (crypten): a leakage check.

A party holds one additive share (in Z/2^64) of every client's fixed-point contribution;
parties pooling their shares hold their sum. Fewer than all parties' shares are uniform
and independent of the input, so the best an attacker can do is guess: this attack
decodes the pooled shares as if they were the input and measures their correlation with
the client's true shared vector (chance 0). Pooling *all* parties' shares reconstructs
the input exactly (correlation 1): the collusion threshold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedsc.privacy.attacks import COLUMNS
from fedsc.privacy.views import ObserverView, RunRecord

if TYPE_CHECKING:
    from fedsc.privacy.attacks import Truth

ATTACK = "party_shares"


def _shared_truth(record: RunRecord, index: int, client: int) -> np.ndarray:
    """The vector client ``client`` secret-shared in operation ``index`` (before encoding)."""
    o = record.operations[index]
    assert o.contributions is not None
    x = o.contributions[client]
    if o.op == "weighted_mean":
        assert o.weights is not None
        w = float(o.weights[client])
        return np.concatenate([w * x, [w]])  # crypten shares [w x, w]
    return x


def relative_error(guess: np.ndarray, true: np.ndarray) -> float:
    """``||guess - true|| / ||true||``; for a zero ``true``: 0 if guessed exactly, else ∞.

    (Dividing by a floor such as 1e-300 overflowed with a RuntimeWarning per value.)
    """
    err = float(np.linalg.norm(np.asarray(guess, dtype=np.float64) - true))
    scale = float(np.linalg.norm(true))
    if scale > 0:
        return err / scale
    return 0.0 if err == 0 else math.inf


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def party_share_leakage(
    view: ObserverView,
    truth: RunRecord | None = None,
    *,
    precision_bits: int = 24,
    min_values: int = 16,
) -> pd.DataFrame:
    """Correlation between the pooled shares a party view holds and each client's input.

    Parameters
    ----------
    view
        A ``party`` or ``colluding_parties`` view (others hold no shares: no rows).
    truth
        The run's :class:`~fedsc.privacy.views.RunRecord` (needed to score; without it
        no rows).
    precision_bits
        Fixed-point bits used to decode the pooled shares (the sum precision of the
        crypten backend; argmax operations are skipped).
    min_values
        Operations with fewer values per client are skipped (a correlation over a handful
        of values, e.g. the metrics mean, says nothing).

    Returns
    -------
    Columns as :data:`fedsc.privacy.attacks.COLUMNS`; metric
    ``share_correlation`` per operation's round and client (chance 0), and
    ``share_relative_error`` (the decoded pooled share taken as the guess; chance 1).
    """
    from smpc.sharing import decode

    rows: list[dict[str, object]] = []
    if truth is None:
        return pd.DataFrame(rows, columns=COLUMNS)
    for o in view.operations:
        if not o.shares or o.op == "argmax" or o.n_values < min_values:
            continue
        pooled = np.zeros_like(next(iter(o.shares.values())))
        for s in o.shares.values():
            pooled = pooled + s  # int64 wraps: addition mod 2^64
        guess = decode(pooled, precision_bits)
        for c in range(o.n_clients):
            true = _shared_truth(truth, o.index, c)
            for metric, value, chance in (
                ("share_correlation", _corr(guess[c], true), 0.0),
                ("share_relative_error", relative_error(guess[c], true), 1.0),
            ):
                rows.append(
                    {
                        "attack": ATTACK,
                        "observer": view.observer
                        + (f"{list(view.parties)}" if view.parties else ""),
                        "backend": view.backend,
                        "target_client": c,
                        "round": -1 if o.round is None else o.round,
                        "metric": metric,
                        "value": value,
                        "chance": chance,
                    }
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def attack(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """The registered attack: :func:`party_share_leakage` scored against the record."""
    return party_share_leakage(view, None if truth is None else truth.record)
