"""What FedscGen's revealed values give away (issue 9, point 2e).

FedscGen's correction reveals, for every shared cell type t, the index of the dominant
client (the one with the most cells of t), that client's cell count of t and its mean
latent M_t (the posterior mean averaged over its cells of t); every client needs M_t by
design of the method (docs/privacy.md). Anyone holding the global model decodes M_t into
an expression profile. The registered attack ``fedscgen_revealed_values``
(:func:`fedscgen_revealed_values`) measures, per shared type (``target_client`` = its
dominant client), how close that profile is to the dominant client's true mean
(log-normalised) expression of t: ``pearson`` over genes, and ``count_abs_error`` of the
revealed count (chance NaN).

Chance: the same correlation with the decoded M_{t'} of every *other* revealed type t'
(averaged), i.e. how well a profile of the same tissue, but not of that type, would
match. Log-expression profiles of one tissue correlate highly with each other (shared
housekeeping genes), so ``pearson_centered`` also subtracts the average of the decoded
revealed profiles (computable by the attacker) from both profiles first: what is left is
the type-specific signal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fedsc.methods.vae import decode, torch_threads
from fedsc.privacy.attacks import COLUMNS, Truth, attack_row
from fedsc.privacy.fedscgen_runs import fedscgen_of, global_model, revealed_from_view
from fedsc.privacy.views import ObserverView

__all__ = ["fedscgen_revealed_values"]

ATTACK = "fedscgen_revealed_values"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def fedscgen_revealed_values(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """Decode each revealed M_t; correlate with the dominant client's true mean expression.

    Needs the correction's revealed aggregates and the global model in the view
    (coordinator, client). A client view skips the types it dominates itself.
    """
    fed = fedscgen_of(truth)
    if fed is None or view.observer not in ("coordinator", "client"):
        return pd.DataFrame(columns=COLUMNS)
    rev = revealed_from_view(view, fed)
    model = global_model(view, fed)
    if rev is None or model is None or not rev["mean_latent"]:
        return pd.DataFrame(columns=COLUMNS)
    types = list(rev["mean_latent"])
    with torch_threads(fed.config.num_threads):
        z = torch.as_tensor(np.stack([rev["mean_latent"][t] for t in types]), dtype=torch.float32)
        decoded = decode(model, z).numpy().astype(np.float64)
    profiles = dict(zip(types, decoded, strict=True))
    center = decoded.mean(axis=0)
    me = None if view.client is None else sorted(fed.names)[view.client]
    rows = []
    for t in types:
        owner = rev["dominant"][t]
        if owner == me:
            continue
        cells = fed.labels[owner] == t
        true = fed.data[owner][torch.from_numpy(cells)].to(torch.float64).mean(0).numpy()
        others = [u for u in types if u != t]
        for metric, ref in (("pearson", 0.0), ("pearson_centered", center)):
            value = _pearson(profiles[t] - ref, true - ref)
            chance = (
                float(np.mean([_pearson(profiles[u] - ref, true - ref) for u in others]))
                if others
                else float("nan")
            )
            rows.append(attack_row(view, ATTACK, owner, metric, value, chance))
        err = abs(rev["dominant_count"][t] - float(cells.sum()))
        rows.append(attack_row(view, ATTACK, owner, "count_abs_error", err, float("nan")))
    return pd.DataFrame(rows, columns=COLUMNS)
