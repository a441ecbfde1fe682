"""Downstream check: leave-one-batch-out cell-type classification (FedscGen paper).

An MLP (two hidden layers of 800 units, batch norm, ReLU) is trained on the cells of all
batches but one and tested on the held-out batch; inputs are z-scored with a scaler fit on
the training batches only. The panel reports the mean accuracy over held-out batches and,
optionally, one row per held-out batch. Cells of the held-out batch whose label never
occurs in training count as misclassified.

Runs on CPU in torch. All randomness (initial weights, minibatch order) comes from one
``torch.Generator`` seeded per held-out batch from ``seed``; the global torch RNG is not
touched.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn

from fedsc.errors import FedscInputError
from fedsc.evaluation._inputs import check_embedding, check_groups

PANEL = "downstream"
HIDDEN: tuple[int, ...] = (800, 800)


def build_mlp(n_in: int, n_out: int, generator: torch.Generator) -> nn.Sequential:
    """MLP ``n_in -> 800 -> 800 -> n_out`` with batch norm and ReLU, initialised from ``generator``.

    The initialisation is PyTorch's default for ``nn.Linear`` (Kaiming-uniform weights,
    uniform biases), drawn from the given generator instead of the global RNG.
    """
    layers: list[nn.Module] = []
    sizes = (n_in, *HIDDEN)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws globally; discard
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], n_out))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(m.in_features)
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def _fit_predict(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    n_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> np.ndarray:
    scaler = StandardScaler().fit(X_train)
    xt = torch.from_numpy(scaler.transform(X_train).astype(np.float32))
    yt = torch.from_numpy(y_train.astype(np.int64))
    xs = torch.from_numpy(scaler.transform(X_test).astype(np.float32))
    model = build_mlp(xt.shape[1], n_classes, generator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = xt.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            sel = order[start : start + batch_size]
            if sel.numel() < 2:  # batch norm needs two samples
                continue
            opt.zero_grad()
            loss_fn(model(xt[sel]), yt[sel]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return model(xs).argmax(dim=1).numpy()


def downstream_accuracy(
    X: np.ndarray,
    batch: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    *,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 3e-3,
    per_batch: bool = False,
    n_threads: int | None = 1,
) -> pd.DataFrame:
    """Leave-one-batch-out accuracy of an MLP classifier of cell types.

    Parameters
    ----------
    X
        Representation, (n_cells, n_features).
    batch, labels
        Batch and cell-type label per cell; at least two batches.
    seed
        Seed of the weights and minibatch order (one ``torch.Generator`` per fold).
    epochs, batch_size, lr
        Adam training schedule.
    per_batch
        Also return one ``lobo_accuracy[<batch>]`` row per held-out batch.
    n_threads
        torch intra-op threads while training (restored afterwards); ``None`` keeps torch's
        setting. One thread is the default: these matrices are small, and with more threads
        than free cores (sweeps run panels in parallel) training was up to 7x slower.

    Returns
    -------
    DataFrame with columns ``panel`` (``"downstream"``), ``metric``, ``value``: first
    ``lobo_accuracy`` (mean over held-out batches), then the per-batch rows if asked.
    """
    X = check_embedding(X)
    n = X.shape[0]
    batch = check_groups(batch, n, "batch")
    labels = check_groups(labels, n, "labels", min_groups=1)
    if epochs < 1 or batch_size < 2:
        raise FedscInputError(f"epochs={epochs} must be >= 1 and batch_size={batch_size} >= 2.")
    y, classes = pd.factorize(labels, sort=True)
    batches = np.unique(batch)
    prev_threads = torch.get_num_threads()
    if n_threads is not None:
        torch.set_num_threads(int(n_threads))
    try:
        acc = _lobo(X, y, batch, batches, len(classes), seed, epochs, batch_size, lr)
    finally:
        torch.set_num_threads(prev_threads)
    rows = [("lobo_accuracy", float(np.mean(list(acc.values()))))]
    if per_batch:
        rows += [(f"lobo_accuracy[{b}]", a) for b, a in acc.items()]
    return pd.DataFrame(
        {"panel": PANEL, "metric": [r[0] for r in rows], "value": [r[1] for r in rows]}
    )


def _lobo(X, y, batch, batches, n_classes, seed, epochs, batch_size, lr) -> dict[str, float]:
    acc: dict[str, float] = {}
    for i, b in enumerate(batches):
        test = batch == b
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        pred = _fit_predict(
            X[~test],
            y[~test],
            X[test],
            n_classes,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            generator=gen,
        )
        acc[str(b)] = float((pred == y[test]).mean())
    return acc
