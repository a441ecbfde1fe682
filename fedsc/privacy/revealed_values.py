"""What FedscGen's revealed values give away (issue 9, point 2e).

FedscGen's correction reveals, for every shared cell type t, the index of the dominant
client (the one with the most cells of t), that client's cell count of t and its mean
latent M_t (the posterior mean averaged over its cells of t); every client needs M_t
by design of the method (docs/privacy.md). Anyone holding the global model decodes
M_t into an expression profile: :func:`revealed_profile_attack` measures how close that
profile is to the dominant client's true mean (log-normalised) expression of t, by the
Pearson correlation over genes.

Chance: the same correlation with the decoded M_{t'} of every *other* revealed type t'
(averaged), i.e. how well a profile of the same tissue, but not of that type, would
match. Log-expression profiles of one tissue correlate highly with each other (shared
housekeeping genes), so the ``pearson_centered`` metric also subtracts the average of the
decoded revealed profiles (computable by the attacker) from both profiles first: what is
left is the type-specific signal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from fedsc.methods.vae import decode
from fedsc.privacy.membership import FedScGenViews

__all__ = ["PROFILE_COLUMNS", "decode_revealed_profiles", "revealed_profile_attack"]

#: Columns of :func:`revealed_profile_attack`'s rows.
PROFILE_COLUMNS = [
    "attack",
    "observer",
    "target_client",
    "cell_type",
    "metric",
    "value",
    "chance",
    "n",
    "seed",
]


def decode_revealed_profiles(views: FedScGenViews) -> dict[str, np.ndarray]:
    """Each revealed M_t decoded by the global decoder (type -> expression over genes)."""
    means = views.revealed["mean_latent"]
    if not means:
        return {}
    types = list(means)
    z = torch.as_tensor(np.stack([means[t] for t in types]), dtype=torch.float32)
    decoded = decode(views.global_model, z).numpy().astype(np.float64)
    return dict(zip(types, decoded, strict=True))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def revealed_profile_attack(views: FedScGenViews) -> pd.DataFrame:
    """Correlate each decoded M_t with the dominant client's true mean expression of t.

    Parameters
    ----------
    views
        A captured run (:func:`fedsc.privacy.membership.capture_fedscgen_views`), plaintext
        or crypten: the revealed values are read from the recorded aggregation result.

    Returns
    -------
    Rows per shared type (``target_client`` = the dominant client's name, ``n`` = its cells
    of t): ``pearson`` and ``pearson_centered`` (chance: the other types' decoded profiles)
    and ``count_abs_error`` (|revealed count - true count|, chance NaN), then the means over
    types (``cell_type == "all"``).
    """
    profiles = decode_revealed_profiles(views)
    names = {c.index: c.name for c in views.clients}
    rows: list[dict[str, Any]] = []
    if not profiles:
        return pd.DataFrame(columns=PROFILE_COLUMNS)
    types = list(profiles)
    center = np.mean([profiles[t] for t in types], axis=0)
    for t in types:
        owner = views.revealed["dominant"][t]
        cells = views.labels[owner] == t
        truth = views.data[owner][torch.from_numpy(cells)].to(torch.float64).mean(0).numpy()
        others = [u for u in types if u != t]
        base = {
            "attack": "revealed_mean_latent",
            "observer": "anyone",
            "target_client": names[owner],
            "cell_type": t,
            "n": int(cells.sum()),
            "seed": views.seed,
        }
        for metric, ref in (("pearson", 0.0), ("pearson_centered", center)):
            value = _pearson(profiles[t] - ref, truth - ref)
            chance = (
                float(np.mean([_pearson(profiles[u] - ref, truth - ref) for u in others]))
                if others
                else float("nan")
            )
            rows.append({**base, "metric": metric, "value": value, "chance": chance})
        err = abs(views.revealed["dominant_count"][t] - float(cells.sum()))
        rows.append({**base, "metric": "count_abs_error", "value": err, "chance": float("nan")})
    df = pd.DataFrame(rows)
    summary = (
        df.groupby("metric", sort=False)
        .agg(value=("value", "mean"), chance=("chance", "mean"), n=("n", "sum"))
        .reset_index()
    )
    summary = summary.assign(
        attack="revealed_mean_latent",
        observer="anyone",
        target_client="all",
        cell_type="all",
        seed=views.seed,
    )
    return pd.concat([df, summary], ignore_index=True)[PROFILE_COLUMNS]
