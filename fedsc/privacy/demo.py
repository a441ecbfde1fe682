"""Measure every attack on scBatchProx over pancreas (PCA 40, 5 clients), both backends.

Run ``python -m fedsc.privacy.demo [--backends plaintext crypten] [--out rows.csv]``; it
prints, per backend, observer, attack and metric, the worst and mean value over clients
and rounds next to the chance level (the numbers in ``docs/privacy.md``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from typing_extensions import override

from fedsc.privacy.attacks import Truth, run_attacks
from fedsc.privacy.runs import pancreas_embedding, record_scbatchprox
from fedsc.privacy.scbatchprox_moments import client_moments
from fedsc.privacy.views import observer_view
from smpc.mechanisms import ClientContext, Mechanism

#: The scBatchProx attacks of the tables in ``docs/privacy.md``.
MEASURED = ("scbatchprox_rows", "scbatchprox_moments", "scbatchprox_weights", "party_shares")


def measure(backends: Sequence[str] = ("plaintext", "crypten"), seed: int = 0) -> pd.DataFrame:
    """Tidy rows of every attack on every observer of a pancreas scBatchProx run.

    Parameters
    ----------
    backends
        Backends to run (crypten starts three parties plus a dealer).
    seed
        Run seed.
    """
    z, labels = pancreas_embedding()
    frames = []
    for backend in backends:
        record, _ = record_scbatchprox(z, labels, backend, seed=seed)
        truth = Truth(record, client_moments(z, labels, record.public["config"], seed))
        views = [
            observer_view(record, "coordinator"),
            observer_view(record, "coordinator", public_weights=True),
            observer_view(record, "client", client=0, public_weights=True),
            observer_view(record, "output_reader"),
        ]
        if backend != "plaintext":
            views += [
                observer_view(record, "party", party=0),
                observer_view(record, "colluding_parties", parties=(0, 1)),
                observer_view(record, "colluding_parties", parties=tuple(range(record.n_parties))),
            ]
        for view in views:
            frame = run_attacks(view, truth, MEASURED)
            if len(frame):
                hidden = view.operations[0].weights is None
                frame["weights"] = "hidden (W only)" if hidden else "known"
                frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def measure_minibatches(path: str, seed: int = 0) -> pd.DataFrame:
    """Attacks on a dataset whose clients hold many minibatches (plaintext backend).

    With thousands of cells per client every Adam step sees a random minibatch, so the
    moment fit (which assumes every minibatch has the split's moments) is approximate.

    Parameters
    ----------
    path
        An ``.h5ad`` file with the embedding in ``X`` and ``obs["batch"]`` (e.g.
        ``../shared/data/cell_lines_293t_jurkat_harmony_pcs.h5ad``).
    seed
        Run seed.
    """
    import anndata as ad

    adata = ad.read_h5ad(path)
    z = np.asarray(adata.X, dtype=np.float64)
    labels = adata.obs["batch"].astype(str).to_numpy()
    record, _ = record_scbatchprox(z, labels, "plaintext", seed=seed)
    truth = Truth(record, client_moments(z, labels, record.public["config"], seed))
    frames = []
    for view in (
        observer_view(record, "coordinator"),
        observer_view(record, "coordinator", public_weights=False),
    ):
        frame = run_attacks(view, truth, MEASURED)
        hidden = view.operations[0].weights is None
        frame["weights"] = "hidden (W only)" if hidden else "known"
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["backend"] = out["backend"] + ":" + Path(path).stem
    return out


class ClientNoise(Mechanism):
    """Stand-in for the Gaussian mechanism being built in ``smpc/mechanisms/gaussian.py``.

    Each client adds ``N(0, std^2)`` to every value of its own contribution before
    sharing (``weighted_mean`` only). Used to show how attack (a) degrades with noise; not
    a calibrated DP mechanism (no accountant, no sensitivity bound).

    Parameters
    ----------
    std
        Noise standard deviation per value and client.
    """

    name = "client_noise"
    ops = frozenset({"weighted_mean"})

    def __init__(self, std: float) -> None:
        self.std = float(std)

    @override
    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        return row + ctx.generator.normal(0.0, self.std, size=row.shape)

    @override
    def params(self) -> dict[str, Any]:
        return {"std": self.std}


def measure_mechanisms(
    z: np.ndarray, labels: np.ndarray, stds: Sequence[float] = (1e-5, 1e-4, 1e-3), seed: int = 0
) -> pd.DataFrame:
    """Attacks (a) and (b) with clipping and with per-client noise (plaintext backend).

    Parameters
    ----------
    z, labels
        Embedding and batch labels.
    stds
        Per-client noise levels to try (``ClientNoise``).
    seed
        Run and mechanism seed.
    """
    settings: list[tuple[str, list[Any]]] = [
        ("clip 1e-3", [{"name": "clip", "max_norm": 1e-3}]),
        *((f"noise {s:g}", [ClientNoise(s)]) for s in stds),
    ]
    frames = []
    for label, mechanisms in settings:
        record, _ = record_scbatchprox(
            z, labels, "plaintext", seed=seed, mechanisms=mechanisms, mechanism_seed=seed
        )
        truth = Truth(record, client_moments(z, labels, record.public["config"], seed))
        frame = run_attacks(
            observer_view(record, "coordinator"), truth, ["scbatchprox_rows", "scbatchprox_moments"]
        )
        frame["weights"] = "known"
        frame["backend"] = f"plaintext + {label}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Worst (max) and mean value, and mean chance, per backend/observer/attack/metric."""
    keys = ["backend", "observer", "weights", "attack", "metric"]
    return rows.groupby(keys, sort=False).agg(
        max=("value", "max"), mean=("value", "mean"), chance=("chance", "mean")
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["plaintext", "crypten"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the tidy rows to this CSV")
    parser.add_argument(
        "--minibatch-data",
        default=None,
        help="also attack this .h5ad (embedding in X, obs['batch']) with many minibatches",
    )
    parser.add_argument(
        "--mechanisms", action="store_true", help="also measure clipping and client noise"
    )
    args = parser.parse_args(argv)
    rows = measure(args.backends, args.seed)
    if args.mechanisms:
        z, labels = pancreas_embedding()
        rows = pd.concat([rows, measure_mechanisms(z, labels, seed=args.seed)])
    if args.minibatch_data:
        rows = pd.concat([rows, measure_minibatches(args.minibatch_data, args.seed)])
    if args.out:
        rows.to_csv(args.out, index=False)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary(rows).to_string(float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
